import pino from "pino";
import { describe, expect, it } from "vitest";
import { Lifecycle } from "../../src/daemon/lifecycle.js";

describe("the daemon's lifecycle", () => {
  it("stops what started last first, each once, and a failing closer does not keep the rest open", async () => {
    const logged: string[] = [];
    const log = pino({ level: "error" }, { write: (line: string) => logged.push(line) });
    const life = new Lifecycle(log);
    const stopped: string[] = [];
    const a = life.add("a", { name: "a" }, (v) => stopped.push(v.name));
    expect(a).toEqual({ name: "a" });
    life.defer("b", () => {
      throw new Error("b is stuck");
    });
    life.defer("c", async ({ graceMs }) => {
      stopped.push(`c ${graceMs}`);
    });
    const first = life.close({ graceMs: 5 });
    const second = life.close({ graceMs: 0 });
    await Promise.all([first, second]);
    expect(stopped).toEqual(["c 5", "a"]);
    expect(logged.join("")).toContain('"component":"b"');
    expect(logged.join("")).toContain("b is stuck");
    await life.close({ graceMs: 0 });
    expect(stopped).toEqual(["c 5", "a"]);
  });
});
