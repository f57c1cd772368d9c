import { describe, expect, it } from "vitest";
import { formatDuration, outputsForGraph, promptExcerpt, promptSeeds, ranOutputs, timing, upstreamSignature } from "./history";

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

  it("puts back only outputs of prompts that ran this graph, not another's with the same node id and type", () => {
    const img = (f: string) => ({ images: [{ filename: f, type: "output" }] });
    // graph A ran: Load Image → Save Image (#2); after Clear, graph B has Save Image #2 unlinked
    const ranA = { "1": { class_type: "LoadImage", inputs: { image: "cat.png" } },
      "2": { class_type: "SaveImage", inputs: { images: ["1", 0], filename_prefix: "graphA" } } };
    const entries = [entry("a", ranA, { "2": img("graphA_00001_.png") })];
    const graphB = { "1": { class_type: "EmptyLatentImage", inputs: { width: 512, height: 512, batch_size: 1 } },
      "2": { class_type: "SaveImage", inputs: { filename_prefix: "ComfyUI" } } };
    const nodes = [{ id: "1", type: "EmptyLatentImage" }, { id: "2", type: "SaveImage" }];
    expect(outputsForGraph(entries, nodes, { prompt: graphB })).toEqual([]);
    // the same wiring with another upstream value is another graph's result too
    const otherImage = { ...ranA, "1": { class_type: "LoadImage", inputs: { image: "dog.png" } } };
    expect(outputsForGraph(entries, [{ id: "2", type: "SaveImage" }], { prompt: otherImage })).toEqual([]);
    // graph A itself gets it back
    expect(outputsForGraph(entries, [{ id: "2", type: "SaveImage" }], { prompt: ranA }).map((g) => g.promptId)).toEqual(["a"]);
  });

  it("compares with the editor's prompt of the entry (its {a|b} unpicked) and ignores seeds that change after each run", () => {
    const img = { images: [{ filename: "x.png", type: "output" }] };
    const typed = { "3": { class_type: "KSampler", inputs: { seed: 5, positive: ["6", 0] } },
      "6": { class_type: "CLIPTextEncode", inputs: { text: "a {red|blue} ball" } },
      "9": { class_type: "SaveImage", inputs: { images: ["3", 0] } } };
    const ran = { ...typed, "6": { class_type: "CLIPTextEncode", inputs: { text: "a red ball" } } };
    const e = { ...entry("p", ran, { "9": img }), extra: { extra_pnginfo: { workflow: { prompt: typed } } } };
    // the seed was randomized after the run: the open graph has another one
    const now = { ...typed, "3": { class_type: "KSampler", inputs: { seed: "18446744073709551615", positive: ["6", 0] } } };
    const nodes = [{ id: "9", type: "SaveImage" }];
    expect(outputsForGraph([e], nodes, { prompt: now, volatile: new Set(["3.seed"]) })).toHaveLength(1);
    expect(outputsForGraph([e], nodes, { prompt: now })).toEqual([]);
  });

  it("reads a node's upstream whatever its ids, exact for 64-bit numbers, and survives a cycle", () => {
    const a = { "5": { class_type: "A", inputs: { v: 1 } }, "9": { class_type: "B", inputs: { x: ["5", 0] } } };
    const b = { "1": { class_type: "A", inputs: { v: "1" } }, "9": { class_type: "B", inputs: { x: ["1", 0] } } };
    expect(upstreamSignature(a, "9")).toBe(upstreamSignature(b, "9"));
    const cyc = { "1": { class_type: "A", inputs: { x: ["2", 0] } }, "2": { class_type: "A", inputs: { x: ["1", 0] } } };
    expect(upstreamSignature(cyc, "1")).toContain("?");
  });
});

describe("ranOutputs", () => {
  it("gives a finished prompt's outputs to the loaded nodes that are there, with images or text", () => {
    const ran = { promptId: "p1", outputs: {
      9: { images: [{ filename: "a.png", subfolder: "", type: "output" }] }, 12: { text: ["x"] }, 5: { images: [] }, 7: { images: [{ filename: "b.png", subfolder: "", type: "output" }] },
    } };
    expect(ranOutputs(ran, [{ id: "9" }, { id: "12" }, { id: "5" }])).toEqual([
      { node: "9", output: ran.outputs[9], promptId: "p1" }, { node: "12", output: ran.outputs[12], promptId: "p1" },
    ]);
  });
});

describe("promptSeeds", () => {
  it("lists each seed once, in node order, from seed and noise_seed inputs", () => {
    expect(promptSeeds({
      12: { inputs: { noise_seed: "18446744073709551615" } }, 3: { inputs: { seed: 42, steps: 20 } },
      5: { inputs: { seed: ["9", 0] } }, 7: { inputs: { seed: 42 } },
    })).toEqual(["42", "18446744073709551615"]);
    expect(promptSeeds(undefined)).toEqual([]);
  });
});
