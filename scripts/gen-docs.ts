// Regenerates the options reference in docs/config.md from the config schema (`npm run docs`).
import { readFile, writeFile } from "node:fs/promises";
import { resolve } from "node:path";
import { renderOptionsReference } from "../src/config/docs.js";

const path = resolve(import.meta.dirname, "../docs/config.md");
const doc = await readFile(path, "utf8");
const [head, rest] = doc.split("<!-- options:begin -->");
const tail = rest?.split("<!-- options:end -->")[1];
if (head === undefined || tail === undefined) throw new Error(`${path}: options markers missing`);
await writeFile(
  path,
  `${head}<!-- options:begin -->\n${renderOptionsReference()}<!-- options:end -->${tail}`,
);
