import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { errorCodes } from "../src/errors.js";

describe("the error catalog", () => {
  it("documents every code in docs/errors.md under its own heading, and nothing else", async () => {
    const doc = await readFile(resolve(import.meta.dirname, "../docs/errors.md"), "utf8");
    const headings = [...doc.matchAll(/^## (CS_[A-Z0-9_]+)$/gm)].map((m) => m[1]);
    expect(headings.sort()).toEqual(Object.keys(errorCodes).sort());
  });
});
