/**
 * A wire-level S3 double for memory benchmarks: one bucket holding `files` zero-byte objects, listed
 * `pageSize` at a time (one page of 100,000 is what some S3-compatible stores answer, and what made
 * memory grow with files), every GET and HEAD answered 200 with an empty body. Nothing is stored:
 * it measures what coldstart keeps per file, not what a server does.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

const EMPTY_ETAG = '"d41d8cd98f00b204e9800998ecf8427e"';

export interface ListingDouble {
  endpoint: string;
  close(): Promise<void>;
}

export async function startListingDouble(files: number, pageSize: number): Promise<ListingDouble> {
  const keys = Array.from(
    { length: files },
    (_, i) => `m/dir${String(i % 100).padStart(3, "0")}/file-${String(i).padStart(7, "0")}.json`,
  ).sort();
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://double");
    const path = url.pathname.split("/").filter(Boolean);
    if (path.length === 1 && url.searchParams.get("list-type") === "2") {
      const after = url.searchParams.get("continuation-token") ?? "";
      let start = after ? keys.findIndex((k) => k > after) : 0;
      if (start < 0) start = keys.length;
      const page = keys.slice(start, start + pageSize);
      const more = start + pageSize < keys.length;
      const contents = page
        .map(
          (k) =>
            `<Contents><Key>${k}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>` +
            `<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>0</Size>` +
            "<StorageClass>STANDARD</StorageClass></Contents>",
        )
        .join("");
      const body =
        `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>${path[0]}</Name><Prefix>m/</Prefix>` +
        `<KeyCount>${page.length}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>${more}</IsTruncated>` +
        `${more ? `<NextContinuationToken>${page.at(-1)}</NextContinuationToken>` : ""}${contents}</ListBucketResult>`;
      res.writeHead(200, { "content-type": "application/xml", "content-length": Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    res.writeHead(200, {
      etag: EMPTY_ETAG,
      "content-length": 0,
      "last-modified": "Thu, 01 Jan 2026 00:00:00 GMT",
    });
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
