// The floor: what a Node process pays at least to move the model over HTTP(S). A plain listing GET,
// then N keep-alive sockets taking 8 MiB ranged GETs (with If-Match, as coldstart sends) from one
// work list, each body written in place with positional writev's of ~256 KiB. No SDK, no signing,
// no hashing, no fsync, no verification. Plain JS so its CPU time carries no transpiler.
// usage: node bench/ceiling/ranged-get.mjs ENDPOINT BUCKET PREFIX DEST [SOCKETS]
// HTTPS trusts the CA in NODE_EXTRA_CA_CERTS, as every Node client does.
import { mkdir, open } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import { dirname, join } from "node:path";

const [endpoint, bucket, prefix, dest, sockets = "32"] = process.argv.slice(2);
const PART = 8 << 20;
const BATCH = 256 << 10;
const url = new URL(endpoint);
const lib = url.protocol === "https:" ? https : http;
const agent = new lib.Agent({ keepAlive: true, maxSockets: Number(sockets) });

function request(path, headers) {
  return new Promise((resolve, reject) => {
    const req = lib.get({ host: url.hostname, port: url.port, path, headers, agent }, resolve);
    req.on("error", reject);
  });
}

async function text(res) {
  let s = "";
  res.setEncoding("utf8");
  for await (const d of res) s += d;
  return s;
}

const listing = await request(`/${bucket}?list-type=2&prefix=${encodeURIComponent(prefix)}`, {});
const doc = await text(listing);
if (listing.statusCode !== 200) throw new Error(`list: ${listing.statusCode} ${doc.slice(0, 200)}`);
const unxml = (s) =>
  s.replace(/&(quot|amp|lt|gt|apos);/g, (_, e) => ({ quot: '"', amp: "&", lt: "<", gt: ">", apos: "'" })[e]);
const objects = [...doc.matchAll(/<Contents>(.*?)<\/Contents>/gs)].map(([, c]) => ({
  key: unxml(/<Key>(.*?)<\/Key>/s.exec(c)[1]),
  size: Number(/<Size>(\d+)<\/Size>/.exec(c)[1]),
  etag: unxml(/<ETag>(.*?)<\/ETag>/s.exec(c)[1]),
}));

// Every file opened and sized up front; the parts of all files in one work list.
const parts = [];
const handles = [];
for (const o of objects) {
  const path = join(dest, o.key.slice(prefix.length));
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, "w");
  await fh.truncate(o.size);
  handles.push(fh);
  for (let start = 0; start < o.size || (start === 0 && o.size === 0); start += PART)
    parts.push({ o, fh, start, end: Math.min(o.size, start + PART) - 1 });
}

async function fetchPart({ o, fh, start, end }) {
  if (end < start) return;
  const res = await request(`/${bucket}/${o.key.split("/").map(encodeURIComponent).join("/")}`, {
    range: `bytes=${start}-${end}`,
    "if-match": o.etag,
  });
  if (res.statusCode !== 206) throw new Error(`${o.key} ${start}: ${res.statusCode}`);
  let pos = start;
  let batch = [];
  let batched = 0;
  for await (const chunk of res) {
    batch.push(chunk);
    batched += chunk.length;
    if (batched >= BATCH) {
      await fh.writev(batch, pos);
      pos += batched;
      batch = [];
      batched = 0;
    }
  }
  if (batched) await fh.writev(batch, pos);
  if (pos + batched !== end + 1) throw new Error(`${o.key} ${start}: ${pos + batched - start} bytes`);
}

let next = 0;
await Promise.all(
  Array.from({ length: Number(sockets) }, async () => {
    while (next < parts.length) await fetchPart(parts[next++]);
  }),
);
for (const fh of handles) await fh.close();
agent.destroy();
