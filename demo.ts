/**
 * `deno task demo`: the lab's five terminals in one command.
 *
 * Starts two backends (5001, 5002) and the load balancer (5000) as their own
 * processes, runs several clients one after another, shows whose answer each
 * got — alternating `[Server 1]`, `[Server 2]`, … — then stops everything it
 * started. Exits 0 when the answers alternated, 1 otherwise.
 *
 * `deno run --allow-net --allow-run --allow-read demo.ts [BASE_PORT]` moves
 * all three ports: the balancer on BASE_PORT, backends on the next two.
 *
 * @module
 */

import { readyAddress } from "./events.ts";
import { styleText } from "node:util";

const CLIENTS = 6;
const READY_TIMEOUT_MS = 15_000;

const colour = Deno.stdout.isTerminal() && !Deno.noColor;
const paint = (format: Parameters<typeof styleText>[0], text: string) =>
  colour ? styleText(format, text, { validateStream: false }) : text;
const SERVER_COLOURS = ["cyan", "magenta", "yellow", "green"] as const;

interface Started {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  /** Everything the process wrote to stderr so far, for error reports. */
  readonly stderr: string[];
}

const here = new URL(".", import.meta.url).pathname;

/** Starts `deno run --allow-net SCRIPT ARGS` and waits until it says it is listening. */
async function start(name: string, script: string, args: string[]): Promise<Started> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", script, ...args],
    cwd: here,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr: string[] = [];
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let ready = false;
  const deadline = setTimeout(() => lines.cancel(), READY_TIMEOUT_MS);
  while (!ready) {
    const { value, done } = await lines.read();
    if (done) break;
    buffered += value;
    stderr.push(value);
    // The backend and the balancer both say `… listening on HOST:PORT …` once ready.
    ready = buffered.split("\n").some((line) => readyAddress(line) !== undefined);
  }
  clearTimeout(deadline);
  // Keep reading, so a chatty process never blocks on a full pipe.
  (async () => {
    try {
      while (true) {
        const { value, done } = await lines.read();
        if (done) break;
        stderr.push(value);
      }
    } catch {
      // Cancelled on shutdown.
    }
  })();
  if (!ready) {
    await stop({ name, child, stderr });
    throw new Error(`${name} did not start:\n${stderr.join("").trimEnd()}`);
  }
  return { name, child, stderr };
}

async function stop(started: Started): Promise<void> {
  try {
    started.child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  await started.child.status;
}

/** Runs one client with `line` on its stdin; returns what it printed. */
async function runClient(port: number, line: string): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "client.ts", `127.0.0.1:${port}`],
    cwd: here,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(`${line}\n`));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  if (code !== 0) throw new Error(`client exited ${code}: ${decoder.decode(stderr).trim()}`);
  return decoder.decode(stdout).trim();
}

async function main(args: string[]): Promise<number> {
  const base = Number(args[0] ?? 5000);
  if (!Number.isInteger(base) || base < 1 || base > 65533) {
    console.error(`demo: BASE_PORT must be an integer 1-65533: got ${JSON.stringify(args[0])}`);
    return 2;
  }
  const [lbPort, port1, port2] = [base, base + 1, base + 2];
  const started: Started[] = [];
  try {
    console.log(paint("bold", `Starting backends on ${port1} and ${port2}, balancer on ${lbPort}`));
    started.push(await start("backend 1", "backend.ts", [String(port1), "1"]));
    started.push(await start("backend 2", "backend.ts", [String(port2), "2"]));
    started.push(
      await start("load balancer", "load_balancer.ts", [
        "--listen",
        `127.0.0.1:${lbPort}`,
        "--backend",
        `127.0.0.1:${port1}`,
        "--backend",
        `127.0.0.1:${port2}`,
      ]),
    );

    const servers: string[] = [];
    for (let i = 1; i <= CLIENTS; i++) {
      const answer = await runClient(lbPort, `hello from client ${i}`);
      const server = /^\[Server (\d+)\]/.exec(answer)?.[1] ?? "?";
      servers.push(server);
      const tint = SERVER_COLOURS[(Number(server) - 1) % SERVER_COLOURS.length] ?? "red";
      console.log(`  client ${i} → ${paint(tint, answer)}`);
    }
    const alternates = servers.every((server, i) => server === String((i % 2) + 1));
    console.log(
      alternates
        ? paint("green", `Round robin: ${servers.join(", ")}, as expected.`)
        : paint("red", `Round robin broken: got ${servers.join(", ")}`),
    );
    return alternates ? 0 : 1;
  } catch (error) {
    console.error(paint("red", `demo: ${(error as Error).message}`));
    return 1;
  } finally {
    // The balancer first, so it drains before its backends go away.
    for (const process of started.reverse()) await stop(process);
    console.log(paint("dim", "Stopped the balancer and both backends."));
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
