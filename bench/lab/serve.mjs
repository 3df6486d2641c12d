// The lab's plain HTTP source for shaping checks: GET /bytes?mib=N answers N MiB of zeros from memory,
// keep-alive, so the shaping (not the server) sets the rate. Prints "listening <url>" when ready.
import http from "node:http";

const [host = "0.0.0.0", port = "0"] = process.argv.slice(2);
const chunk = Buffer.alloc(1 << 20);
const server = http.createServer((req, res) => {
  const mib = Math.min(Number(new URL(req.url ?? "/", "http://x").searchParams.get("mib") ?? "64"), 4096);
  res.writeHead(200, { "content-type": "application/octet-stream", "content-length": mib * chunk.length });
  let left = mib;
  const pump = () => {
    while (left > 0) {
      left--;
      if (!res.write(chunk)) return res.once("drain", pump);
    }
    res.end();
  };
  pump();
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), host, () => {
  const a = server.address();
  process.stdout.write(`listening http://${a.address}:${a.port}\n`);
});
process.on("SIGTERM", () => process.exit(0));
