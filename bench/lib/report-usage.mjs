// Preloaded (node --import) into a measured child: at exit, append its own CPU time (user + system)
// and peak RSS as one JSON line to the file named by BENCH_USAGE_FILE. The parent times the wall.
// Peak RSS is VmHWM from /proc: getrusage's maxrss survives execve, so a child spawned by a large
// parent would report the parent's high-water mark.
import { appendFileSync, readFileSync } from "node:fs";

const file = process.env.BENCH_USAGE_FILE;
if (file) {
  process.on("exit", () => {
    const u = process.resourceUsage();
    const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
    const line = {
      cpuSeconds: (u.userCPUTime + u.systemCPUTime) / 1e6,
      userSeconds: u.userCPUTime / 1e6,
      systemSeconds: u.systemCPUTime / 1e6,
      maxRssBytes: hwm ? Number(hwm[1]) * 1024 : u.maxRSS * 1024,
    };
    appendFileSync(file, `${JSON.stringify(line)}\n`);
  });
}
