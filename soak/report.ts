/**
 * The soak's report: what it measured over time, the faults it caused, the
 * checks it made, as JSON, Markdown and an SVG plot.
 *
 * @module
 */

/** One reading of the balancer, every sampling interval. */
export interface Sample {
  /** Seconds since the load started. */
  t: number;
  rssKiB: number;
  fds: number;
  /** Connections in progress, by the balancer's metrics (undefined when its admin API did not answer). */
  active?: number;
  /** Soak connections finished per second since the last sample. */
  rate: number;
}

/** A fault the soak caused, at `t` seconds since the load started. */
export interface FaultEvent {
  t: number;
  kind: "kill" | "restart" | "reload" | "drain" | "enable" | "descriptor-burst" | "sighup-storm";
  detail: string;
}

/** One thing the soak checked. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
  /** A few of the connections that failed it, for a reader to start from. */
  examples?: string[];
}

/** Everything a soak run found. */
export interface SoakReport {
  engine: string;
  seed: number;
  minutes: number;
  startedAt: string;
  /** Per kind of client, how many connections ended each way. */
  outcomes: Record<string, Record<string, number>>;
  /** The balancer's access log: connections by how they ended. */
  accessEnds: Record<string, number>;
  /** What went wrong, at most a few of each, for a reader to start from. */
  examples: string[];
  faults: FaultEvent[];
  checks: Check[];
  samples: Sample[];
  /** The balancer's diagnostics (stderr), written beside the report. */
  balancerLog: string[];
}

/** Whether every check passed. */
export function passed(report: SoakReport): boolean {
  return report.checks.every((check) => check.ok);
}

/** The report as Markdown, naming the plot `svgName` beside it. */
export function renderMarkdown(report: SoakReport, svgName: string): string {
  const lines = [
    `# Soak: ${report.engine} engine, ${report.minutes} min — ${
      passed(report) ? "passed" : "FAILED"
    }`,
    "",
    `Started ${report.startedAt}; seed ${report.seed} ` +
    `(replay the fault schedule: \`deno task soak --engine ${report.engine} --minutes ${report.minutes} --seed ${report.seed}\`).`,
    "",
    "## Checks",
    "",
    "| check | result | detail |",
    "| --- | --- | --- |",
    ...report.checks.map((c) => `| ${c.name} | ${c.ok ? "ok" : "**FAILED**"} | ${c.detail} |`),
    "",
    "## Clients",
    "",
    "How each kind of soak client's connections ended (`ok`: every byte exact both ways; " +
    "`lost`: cut short on its way back, although the backend finished it; `unconfirmed`: " +
    "a backend-first stream whose backend was killed before it could say).",
    "",
  ];
  const outcomeNames = [...new Set(Object.values(report.outcomes).flatMap(Object.keys))].sort();
  lines.push(`| client | ${outcomeNames.join(" | ")} |`);
  lines.push(`| --- |${outcomeNames.map(() => " ---: |").join("")}`);
  for (const [kind, counts] of Object.entries(report.outcomes)) {
    lines.push(`| ${kind} | ${outcomeNames.map((name) => counts[name] ?? 0).join(" | ")} |`);
  }
  lines.push("", "The balancer's access log, by how connections ended:", "");
  lines.push(
    Object.entries(report.accessEnds).sort().map(([end, n]) => `\`${end}\` ${n}`).join(", ") ||
      "(none)",
  );
  const byKind = new Map<string, number>();
  for (const fault of report.faults) byKind.set(fault.kind, (byKind.get(fault.kind) ?? 0) + 1);
  lines.push(
    "",
    "## Faults",
    "",
    [...byKind].map(([kind, n]) => `${kind} ×${n}`).join(", ") || "(none)",
    "",
    `![RSS, descriptors, active connections and connection rate over time](${svgName})`,
    "",
  );
  if (report.examples.length > 0) {
    lines.push("## Examples of what went wrong", "", ...report.examples.map((e) => `- ${e}`), "");
  }
  return lines.join("\n");
}

const PANELS: { key: keyof Sample; title: string; scale: (v: number) => number }[] = [
  { key: "rssKiB", title: "RSS, MiB", scale: (v) => v / 1024 },
  { key: "fds", title: "open descriptors", scale: (v) => v },
  { key: "active", title: "active connections", scale: (v) => v },
  { key: "rate", title: "connections finished per second", scale: (v) => v },
];

const COLOURS: Record<FaultEvent["kind"], string> = {
  kill: "#c0392b",
  restart: "#27ae60",
  reload: "#2980b9",
  drain: "#8e44ad",
  enable: "#16a085",
  "descriptor-burst": "#d35400",
  "sighup-storm": "#7f8c8d",
};

/** The samples as four stacked plots over time, faults marked as vertical lines. */
export function renderSvg(report: SoakReport): string {
  const width = 960;
  const left = 70;
  const right = 20;
  const panelHeight = 130;
  const gap = 36;
  const top = 40;
  const legendHeight = 40;
  const height = top + PANELS.length * (panelHeight + gap) + legendHeight;
  const samples = report.samples;
  const endT = Math.max(1, ...samples.map((s) => s.t), ...report.faults.map((f) => f.t));
  const x = (t: number) => left + (t / endT) * (width - left - right);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${left}" y="22" font-size="14">${
      escapeXml(`Soak, ${report.engine} engine, seed ${report.seed}`)
    }</text>`,
  ];
  PANELS.forEach((panel, index) => {
    const y0 = top + index * (panelHeight + gap) + 14;
    const points = samples
      .filter((s) => s[panel.key] !== undefined)
      .map((s) => [s.t, panel.scale(s[panel.key] as number)] as const);
    const max = Math.max(1, ...points.map(([, v]) => v)) * 1.1;
    const y = (v: number) => y0 + panelHeight - (v / max) * panelHeight;
    out.push(
      `<text x="${left}" y="${y0 - 4}">${escapeXml(panel.title)}</text>`,
      `<rect x="${left}" y="${y0}" width="${width - left - right}" height="${panelHeight}" ` +
        `fill="none" stroke="#bbb"/>`,
      `<text x="${left - 6}" y="${y0 + 10}" text-anchor="end">${formatTick(max)}</text>`,
      `<text x="${left - 6}" y="${y0 + panelHeight}" text-anchor="end">0</text>`,
    );
    for (const fault of report.faults) {
      out.push(
        `<line x1="${x(fault.t).toFixed(1)}" x2="${x(fault.t).toFixed(1)}" y1="${y0}" ` +
          `y2="${y0 + panelHeight}" stroke="${COLOURS[fault.kind]}" stroke-opacity="0.45"/>`,
      );
    }
    if (points.length > 0) {
      const path = points.map(([t, v], i) =>
        `${i === 0 ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`
      ).join("");
      out.push(`<path d="${path}" fill="none" stroke="#222" stroke-width="1.3"/>`);
    }
  });
  const axisY = top + PANELS.length * (panelHeight + gap) - gap + 28;
  out.push(
    `<text x="${left}" y="${axisY}">0 s</text>`,
    `<text x="${width - right}" y="${axisY}" text-anchor="end">${Math.round(endT)} s</text>`,
  );
  let legendX = left;
  const legendY = axisY + 22;
  for (const [kind, colour] of Object.entries(COLOURS)) {
    out.push(
      `<line x1="${legendX}" x2="${legendX + 14}" y1="${legendY - 4}" y2="${legendY - 4}" ` +
        `stroke="${colour}" stroke-width="3"/>`,
      `<text x="${legendX + 18}" y="${legendY}">${kind}</text>`,
    );
    legendX += 30 + kind.length * 6.5;
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

function formatTick(value: number): string {
  return value >= 100 ? String(Math.round(value)) : value.toFixed(1);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
}
