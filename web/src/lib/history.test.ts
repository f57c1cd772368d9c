import { describe, expect, it } from "vitest";
import { formatDuration, outputsForGraph, promptExcerpt, timing } from "./history";

const entry = (promptId: string, prompt: Record<string, unknown>, outputs: Record<string, unknown>) =>
  ({ promptId, prompt, outputs, messages: [], status: "success" }) as Parameters<typeof outputsForGraph>[0][number];

describe("history", () => {
  it("reads the start time and duration from the recorded events", () => {
    const msgs = [["execution_start", { timestamp: 1000 }], ["execution_cached", { nodes: [] }],
      ["execution_success", { timestamp: 3500 }]];
    expect(timing(msgs)).toEqual({ start: 1000, durationMs: 2500 });
    expect(timing([["execution_start", { timestamp: 5 }]])).toEqual({ start: 5, durationMs: undefined });
    expect(timing([null, "x", ["execution_start", {}]])).toEqual({ start: undefined, durationMs: undefined });
    expect(formatDuration(340)).toBe("340 ms");
    expect(formatDuration(2500)).toBe("2.5 s");
    expect(formatDuration(125000)).toBe("2 min 5 s");
  });

  it("takes the first text input as the prompt excerpt", () => {
    const prompt = {
      "10": { class_type: "CLIPTextEncode", inputs: { text: "blurry" } },
      "6": { class_type: "CLIPTextEncode", inputs: { text: "  a red\n circle  ", clip: ["4", 1] } },
      "3": { class_type: "KSampler", inputs: { seed: 1 } },
    };
    expect(promptExcerpt(prompt)).toBe("a red circle");
    expect(promptExcerpt({ "1": { class_type: "X", inputs: { text: "x".repeat(100) } } }, 10)).toBe("xxxxxxxxx…");
    expect(promptExcerpt(undefined)).toBe("");
  });

  it("puts each node's newest matching output back on it", () => {
    const img = (f: string) => ({ images: [{ filename: f, type: "output" }] });
    const entries = [ // newest first
      entry("c", { "9": { class_type: "PreviewImage" } }, { "9": img("c.png") }), // same id, other type
      entry("b", { "9": { class_type: "SaveImage" }, "5": { class_type: "ShowText" } }, { "9": img("b.png"), "5": { text: ["hi"] } }),
      entry("a", { "9": { class_type: "SaveImage" }, "7": { class_type: "SaveImage" } }, { "9": img("a.png"), "7": img("a7.png") }),
    ];
    const got = outputsForGraph(entries, [{ id: "9", type: "SaveImage" }, { id: "7", type: "SaveImage" },
      { id: "5", type: "ShowText" }, { id: "1", type: "SaveImage" }]);
    expect(got.map((g) => [g.node, g.promptId])).toEqual([["7", "a"], ["9", "b"], ["5", "b"]]);
    expect(got[1].output.images![0].filename).toBe("b.png");
  });
});
