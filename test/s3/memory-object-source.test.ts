import { MemoryObjectSource } from "../../src/s3/memory-object-source.js";
import { objectSourceConformance } from "./object-source-conformance.js";

// Unit tier: the in-memory source held to the contract S3 (through RGW) is held to.
objectSourceConformance("in memory", async () => {
  const source = new MemoryObjectSource();
  const bucket = "conformance";
  return {
    source,
    bucket,
    put: async (key, body) => {
      source.put(bucket, key, body);
    },
    partSizesKnown: true,
    putMultipart: async (key, body, partSize) => {
      const sizes: number[] = [];
      for (let at = 0; at < body.length; at += partSize) sizes.push(Math.min(partSize, body.length - at));
      source.put(bucket, key, body, { partSizes: sizes });
    },
  };
});
