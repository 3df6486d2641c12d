import { ColdstartError } from "../errors.js";

const CHARS = /^[A-Za-z0-9._/-]{1,200}$/;

/**
 * A model id names a directory under <root>/models/, so it must be a safe relative path:
 * 1-200 characters of [A-Za-z0-9._/-], no empty, "." or ".." segments, no leading or trailing "/".
 */
export function validateModelId(id: unknown): string {
  const fail = (why: string): never => {
    throw new ColdstartError("CS_MODEL_ID_INVALID", `model id ${JSON.stringify(id)} ${why}`, {
      details: { field: "id", value: id },
    });
  };
  if (typeof id !== "string") return fail("must be a string");
  if (!CHARS.test(id)) return fail("must be 1-200 characters of [A-Za-z0-9._/-]");
  if (id.startsWith("/") || id.endsWith("/")) return fail("must not start or end with /");
  for (const seg of id.split("/")) {
    if (seg === "" || seg === "." || seg === "..") return fail(`must not have a "${seg}" segment`);
  }
  return id;
}
