import { describe, expect, it } from "vitest";
import { parseHistory } from "./history";

const prompt = (n: number) => [n, `p${n}`, {}, {}, ["1"]];

describe("parseHistory", () => {
  it("keeps the server's node warnings, why a run ran again, and why it failed or was stopped", () => {
    const [stopped, failed, ok] = parseHistory({
      a: { prompt: prompt(1), outputs: {}, status: { status_str: "success", completed: true, messages: [
        ["steerflow_retry", { prompt_id: "a", attempt: 1, message: "the server stopped while running this prompt; it was run again" }],
        ["execution_start", { prompt_id: "a" }], ["execution_success", { prompt_id: "a" }]],
        steerflow_warnings: [{ node: "3", message: "Stop: the training state at step 40 could not be saved" },
          { node: null, message: "and 2 more warning(s), not kept" }, "junk"] } },
      b: { prompt: prompt(2), outputs: {}, status: { status_str: "error", completed: false, messages: [
        ["execution_error", { prompt_id: "b", node_id: "5", node_type: "KSampler", exception_message: "out of memory" }]] } },
      c: { prompt: prompt(3), outputs: {}, status: { status_str: "error", completed: false, messages: [
        ["execution_interrupted", { prompt_id: "c", steerflow_note: "the node did not stop in 5 s" }]] } },
    });
    expect(ok.warnings).toEqual(["ran again: the server stopped while running this prompt; it was run again",
      "node 3: Stop: the training state at step 40 could not be saved", "and 2 more warning(s), not kept"]);
    expect(ok.reason).toBeUndefined();
    expect(failed.reason).toBe("KSampler #5: out of memory");
    expect(failed.warnings).toEqual([]);
    expect(stopped.status).toBe("interrupted");
    expect(stopped.reason).toBe("the node did not stop in 5 s");
  });

  it("survives entries that are not ComfyUI's shape", () => {
    const got = parseHistory({ x: null, y: { status: { messages: "no" } }, z: { status: { steerflow_warnings: 5 } } } as never);
    expect(got.map((e) => [e.promptId, e.warnings, e.reason])).toEqual([["y", [], undefined], ["z", [], undefined]]);
  });
});
