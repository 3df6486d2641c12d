// Median TCP connect time to host:port over 15 tries, in ms: the lab's round trip as TCP sees it.
import net from "node:net";

const [host, port] = process.argv.slice(2);
const times = [];
for (let i = 0; i < 15; i++) {
  const t0 = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    const s = net.connect(Number(port), host, () => {
      s.destroy();
      resolve();
    });
    s.on("error", reject);
  });
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
times.sort((a, b) => a - b);
process.stdout.write(`${JSON.stringify({ rttMs: Math.round(times[7] * 100) / 100 })}\n`);
