import { expect } from "vitest";
import { ColdstartError, type ErrorCode } from "../../src/errors.js";

/** Asserts that `thrown` is a ColdstartError with `code` and returns it for further checks. */
export function expectColdstartError(thrown: unknown, code: ErrorCode): ColdstartError {
  expect(thrown, `expected ${code}`).toBeInstanceOf(ColdstartError);
  const err = thrown as ColdstartError;
  expect(err.code, err.message).toBe(code);
  return err;
}

/** What `fn` throws (undefined if it returns). */
export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

/** Awaits `p` and asserts it rejects with a ColdstartError of `code`. */
export async function expectRejection(p: Promise<unknown>, code: ErrorCode): Promise<ColdstartError> {
  const thrown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  return expectColdstartError(thrown, code);
}
