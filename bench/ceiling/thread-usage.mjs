// Preloaded (node --import) beside bench/lib/report-usage.mjs into a measured Node child: at exit, the
// CPU of each of its live threads, from /proc/self/task/TID/stat (utime + stime, fields 14 and 15, in
// clock ticks), appended as one JSON line to the file named by BENCH_THREADS_FILE. The main thread is
// the one whose tid is the pid: that is the event loop, where the SDK, the HTTP parser, TLS records
// and hashing run. Threads that ended earlier are not listed (their CPU is in the process total).
import { appendFileSync, readdirSync, readFileSync } from "node:fs";

const file = process.env.BENCH_THREADS_FILE;
if (file) {
  process.on("exit", () => {
    const threads = [];
    for (const tid of readdirSync("/proc/self/task")) {
      let stat;
      try {
        stat = readFileSync(`/proc/self/task/${tid}/stat`, "utf8");
      } catch {
        continue; // ended while listed
      }
      const close = stat.lastIndexOf(")");
      // Fields from 3 (state) on, after the command name in parentheses (which may hold spaces).
      const f = stat.slice(close + 2).split(" ");
      threads.push({
        tid: Number(tid),
        name: stat.slice(stat.indexOf("(") + 1, close),
        userTicks: Number(f[11]),
        systemTicks: Number(f[12]),
      });
    }
    appendFileSync(file, `${JSON.stringify({ pid: process.pid, threads })}\n`);
  });
}
