// Throughput over N parallel connections for a fixed time, each connection its own keep-alive socket
// downloading GET <url> over and over. Prints one JSON line: {connections, seconds, bytes, mbit, perConnectionMbit}.
import http from "node:http";

const [url, conns = "1", secs = "5"] = process.argv.slice(2);
const n = Number(conns);
const deadline = Date.now() + Number(secs) * 1000;
const warmupMs = 1000;
const started = Date.now();
let bytes = 0;
const perConn = new Array(n).fill(0);

function loop(i, agent) {
  return new Promise((resolve, reject) => {
    const once = () => {
      if (Date.now() >= deadline) return resolve();
      const req = http.get(url, { agent }, (res) => {
        res.on("data", (d) => {
          // Count only after a warm-up: HTB and TCP slow start settle in the first second.
          if (Date.now() - started >= warmupMs) {
            bytes += d.length;
            perConn[i] += d.length;
          }
          if (Date.now() >= deadline) req.destroy();
        });
        res.on("end", once);
        res.on("error", () => resolve());
      });
      req.on("error", (e) => (Date.now() >= deadline ? resolve() : reject(e)));
    };
    once();
  });
}

await Promise.all(
  Array.from({ length: n }, (_, i) => loop(i, new http.Agent({ keepAlive: true, maxSockets: 1 }))),
);
const seconds = (Math.min(Date.now(), deadline) - started - warmupMs) / 1000;
const mbit = (b) => Math.round((b * 8) / seconds / 1e4) / 100;
process.stdout.write(
  `${JSON.stringify({ connections: n, seconds, bytes, mbit: mbit(bytes), perConnectionMbit: perConn.map(mbit) })}\n`,
);
process.exit(0);
