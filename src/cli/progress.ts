import bytes from "bytes-iec";
import cliProgress from "cli-progress";
import type { StageProgress, StageResult } from "../staging/job-types.js";

export interface ProgressView {
  stop(): void;
}

/**
 * A live bar on stderr when it is a terminal; otherwise a JSON line on stdout every `intervalMs`
 * (a modest rate: CI logs and `kubectl logs` stay readable).
 */
export function startProgress(
  snapshot: () => StageProgress,
  options: { json: boolean; stream: NodeJS.WritableStream; intervalMs: number },
): ProgressView {
  if (options.json) {
    const timer = setInterval(() => {
      const p = snapshot();
      if (p.phase !== "downloading") return;
      options.stream.write(`${JSON.stringify({ event: "progress", ...view(p) })}\n`);
    }, options.intervalMs);
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format:
        "{bar} {percentage}% | {doneH} / {totalH} | {rateH}/s | ETA {etaH} | files {filesDone}/{filesTotal}",
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  const tick = () => {
    const p = snapshot();
    if (p.phase === "listing") return;
    const v = view(p);
    const fields = {
      doneH: human(p.bytesDone),
      totalH: human(p.bytesTotal),
      rateH: human(v.bytesPerSecond),
      etaH: v.etaSeconds === null ? "?" : `${v.etaSeconds}s`,
      filesDone: p.filesDone,
      filesTotal: p.filesTotal,
    };
    if (!started) {
      bar.start(Math.max(p.bytesTotal, 1), p.bytesDone, fields);
      started = true;
    } else bar.update(p.bytesDone, fields);
  };
  const timer = setInterval(tick, 200);
  timer.unref();
  let stopped = false;
  return {
    stop: () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      tick();
      if (started) bar.stop();
    },
  };
}

function view(p: StageProgress) {
  const seconds = Math.max((Date.now() - p.startedAt) / 1000, 0.001);
  const rate = Math.round((p.bytesDone - p.resumedBytes) / seconds);
  const left = p.bytesTotal - p.bytesDone;
  return {
    filesDone: p.filesDone,
    filesTotal: p.filesTotal,
    bytesDone: p.bytesDone,
    bytesTotal: p.bytesTotal,
    bytesPerSecond: rate,
    etaSeconds: rate > 0 ? Math.ceil(left / rate) : null,
    retries: p.retries,
    resumedBytes: p.resumedBytes,
  };
}

function human(n: number): string {
  return bytes.format(n, { mode: "binary", decimalPlaces: 1 }) ?? `${n} B`;
}

export function printSummary(r: StageResult, json: boolean): void {
  if (json) {
    const { files, bytes: b, seconds, bytesPerSecond, retries, resumedBytes } = r;
    process.stdout.write(
      `${JSON.stringify({ files, bytes: b, seconds: Number(seconds.toFixed(3)), bytesPerSecond, retries, resumedBytes })}\n`,
    );
    return;
  }
  process.stdout.write(
    `staged ${r.files} files, ${human(r.bytes)} in ${r.seconds.toFixed(1)}s ` +
      `(${human(r.bytesPerSecond)}/s, ${r.retries} retries, ${human(r.resumedBytes)} resumed)\n`,
  );
}
