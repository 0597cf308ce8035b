/**
 * `deno task soak [--quick] [--minutes N] [--engine epoll|deno] [--seed N] [--out DIR]`
 *
 * Runs the real balancer as a process in front of soak backends (processes
 * that check every byte they get), loads it with every kind of client at
 * once, causes faults on a seeded schedule meanwhile, and checks that no
 * byte was lost or changed, nothing hung, nothing reached a backend it should
 * not have, and memory and descriptors stayed flat (soak.ts; docs/soak.md).
 * Writes a report (Markdown, JSON, SVG, the balancer's log) and exits 0 when
 * every check passed, 1 when one failed or the run was interrupted, 2 on a
 * bad flag.
 *
 * @module
 */

import { describe } from "../errors.ts";
import { parseSoakArgs, type SoakOptions, USAGE, UsageError } from "./flags.ts";
import { passed, renderMarkdown, renderSvg, type SoakReport } from "./report.ts";
import { runSoak } from "./soak.ts";

/** Runs the soak the command line asks for; resolves with the exit code. */
export async function main(args: readonly string[]): Promise<number> {
  let options: SoakOptions;
  try {
    options = parseSoakArgs(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`soak: ${error.message}\n${USAGE}`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  // SIGINT or SIGTERM: stop, take down what was started, write what was
  // found. A second one exits at once.
  const interrupt = new AbortController();
  const signals = (["SIGINT", "SIGTERM"] as const).map((signal) => {
    const handler = () => {
      if (interrupt.signal.aborted) Deno.exit(130);
      console.error(`soak: ${signal}: stopping, taking down the balancer and backends`);
      interrupt.abort(new Error(`interrupted by ${signal}`));
    };
    Deno.addSignalListener(signal, handler);
    return () => Deno.removeSignalListener(signal, handler);
  });
  try {
    const report = await runSoak(options, interrupt.signal);
    for (const check of report.checks) {
      console.log(`soak: ${check.ok ? "ok    " : "FAILED"} ${check.name}: ${check.detail}`);
    }
    const markdown = await writeReport(report, options.out);
    console.log(`soak: ${passed(report) ? "passed" : "FAILED"}; report in ${markdown}`);
    return passed(report) ? 0 : 1;
  } catch (error) {
    console.error(`soak: could not write the report: ${describe(error)}`);
    return 1;
  } finally {
    for (const remove of signals) remove();
  }
}

// Writes soak-E.{json,svg,md,log} into `out`; returns the Markdown's path.
async function writeReport(report: SoakReport, out: string): Promise<string> {
  await Deno.mkdir(out, { recursive: true });
  const base = `${out}/soak-${report.engine}`;
  await Deno.writeTextFile(`${base}.json`, JSON.stringify(report, null, 1) + "\n");
  await Deno.writeTextFile(`${base}.svg`, renderSvg(report));
  await Deno.writeTextFile(`${base}.md`, renderMarkdown(report, `soak-${report.engine}.svg`));
  await Deno.writeTextFile(`${base}.log`, report.balancerLog.join("\n") + "\n");
  return `${base}.md`;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
