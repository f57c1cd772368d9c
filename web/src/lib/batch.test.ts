import { describe, expect, it } from "vitest";
import { advanceControls, changeSignature, clampCount, countTextIssue, formatElapsed, parseCountText, QUEUE_COUNT_MAX } from "./batch";
import { matchesQuery, nativeSizeText, nativeSizeValues, requiredModels } from "./examples";
import type { ApiPrompt, GraphNode } from "./graph";
import { testDefs } from "./testdefs";

const defs = testDefs();

function sampler(id: string, seed: number, mode?: "fixed" | "increment" | "randomize"): GraphNode {
  return { id, type: "KSampler", pos: [0, 0], values: { seed, steps: 20 }, control: mode ? { seed: mode } : undefined };
}

describe("advanceControls (batch count)", () => {
  it("moves increment and randomize seeds on, keeps fixed ones and untouched nodes", () => {
    const nodes = [sampler("1", 5, "increment"), sampler("2", 5, "fixed"), sampler("3", 5, "randomize"), sampler("4", 5)];
    const out = advanceControls(nodes, [], defs, () => 0.25);
    expect(out[0].values.seed).toBe(6);
    expect(out[1]).toBe(nodes[1]);
    expect(out[2].values.seed).not.toBe(5);
    expect(out[3]).toBe(nodes[3]);
    expect(out[0].values.steps).toBe(20);
    expect(nodes[0].values.seed).toBe(5); // pure: the input is not changed
  });

  it("three prompts get three different seeds; a linked seed never moves", () => {
    let nodes = [sampler("1", 0, "increment"), sampler("2", 9, "increment")];
    const links = [{ source: "9", slot: 0, target: "2", input: "seed" }];
    const seeds: number[] = [];
    for (let i = 0; i < 3; i++) {
      seeds.push(nodes[0].values.seed as number);
      nodes = advanceControls(nodes, links, defs);
    }
    expect(seeds).toEqual([0, 1, 2]);
    expect(nodes[1].values.seed).toBe(9);
  });
});

describe("a primitive's control stays within what it feeds (ComfyUI's PrimitiveNode)", () => {
  it("a randomized Int feeding steps stays in steps' 1..10000; one at the top does not step past it", () => {
    const prim: GraphNode = { id: "p", type: "PrimitiveInt", pos: [0, 0], values: { value: 2 }, control: { value: "randomize" } };
    const links = [{ source: "p", slot: 0, target: "k", input: "steps" }];
    for (const r of [0, 0.5, 0.999999]) {
      const [out] = advanceControls([prim, sampler("k", 1)], links, defs, () => r);
      expect(out.values.value).toBeGreaterThanOrEqual(1);
      expect(out.values.value).toBeLessThanOrEqual(10000);
    }
    const top: GraphNode = { ...prim, values: { value: 10000 }, control: { value: "increment" } };
    expect(advanceControls([top, sampler("k", 1)], links, defs)[0].values.value).toBe(10000);
    // feeding a seed, it keeps the seed's range (not the steps')
    const seedLinks = [{ source: "p", slot: 0, target: "k", input: "seed" }];
    const [seeded] = advanceControls([prim, sampler("k", 1)], seedLinks, defs, () => 0.999999);
    expect(seeded.values.value as number).toBeGreaterThan(10000);
  });
});

describe("parseCountText and countTextIssue (the batch-count field)", () => {
  it("asks for no count while the field is emptied, out of range or no whole number", () => {
    for (const t of ["", "  ", "0", "abc", "-2", "1.5", "1e2", "101", "1000", "5000"]) {
      expect(parseCountText(t)).toBeNull();
      expect(countTextIssue(t)).toEqual(expect.any(String));
    }
  });

  it("says why, so the field is marked and Queue refuses rather than queue another count", () => {
    expect(countTextIssue("")).toMatch(/empty/);
    expect(countTextIssue("0")).toMatch(/at least 1/);
    expect(countTextIssue("1000")).toMatch(new RegExp(`at most ${QUEUE_COUNT_MAX}`));
    expect(countTextIssue("1.5")).toMatch(/whole number/);
  });

  it("reads whole numbers from 1 to QUEUE_COUNT_MAX", () => {
    expect(parseCountText("3")).toBe(3);
    expect(parseCountText(" 12 ")).toBe(12);
    expect(parseCountText("007")).toBe(7);
    expect(parseCountText(String(QUEUE_COUNT_MAX))).toBe(QUEUE_COUNT_MAX);
    for (const t of ["1", "3", "100"]) expect(countTextIssue(t)).toBeNull();
  });
});

describe("changeSignature (queue on change)", () => {
  const prompt: ApiPrompt = {
    "3": { class_type: "KSampler", inputs: { seed: 1, steps: 20, model: ["4", 0] } },
    "6": { class_type: "CLIPTextEncode", inputs: { text: "a red circle" } },
  };
  const nodes = [{ id: "3", control: { seed: "randomize" as const } }, { id: "6" }];

  it("ignores what control_after_generate moves, sees every other edit", () => {
    const base = changeSignature(prompt, nodes);
    const reseeded = structuredClone(prompt);
    reseeded["3"].inputs.seed = 77;
    expect(changeSignature(reseeded, nodes)).toBe(base);
    const edited = structuredClone(prompt);
    edited["6"].inputs.text = "a blue circle";
    expect(changeSignature(edited, nodes)).not.toBe(base);
    // a fixed seed is an edit like any other
    expect(changeSignature(reseeded, [{ id: "3", control: { seed: "fixed" } }]))
      .not.toBe(changeSignature(prompt, [{ id: "3", control: { seed: "fixed" } }]));
  });

  it("does not depend on key order", () => {
    const reordered: ApiPrompt = { "6": prompt["6"], "3": { class_type: "KSampler", inputs: { model: ["4", 0], steps: 20, seed: 1 } } };
    expect(changeSignature(reordered, nodes)).toBe(changeSignature(prompt, nodes));
  });
});

describe("helpers", () => {
  it("clamps the batch count", () => {
    expect(clampCount(0)).toBe(1);
    expect(clampCount("3")).toBe(3);
    expect(clampCount(2.7)).toBe(2);
    expect(clampCount(1e9)).toBe(QUEUE_COUNT_MAX);
    expect(clampCount("x")).toBe(1);
  });

  it("formats elapsed times", () => {
    expect(formatElapsed(4200)).toBe("4.2 s");
    expect(formatElapsed(65_000)).toBe("1 min 05 s");
    expect(formatElapsed(-5)).toBe("0.0 s");
  });

  it("filters examples by every word of the query", () => {
    const ex = { name: "sega.json", title: "Semantic guidance (SEGA)", description: "turn the red circle blue" };
    expect(matchesQuery(ex, "")).toBe(true);
    expect(matchesQuery(ex, "RED sega")).toBe(true);
    expect(matchesQuery(ex, "red square")).toBe(false);
  });

  it("lists the models an example needs, as a list or by model folder", () => {
    expect(requiredModels(["a.safetensors", "b"])).toEqual(["a.safetensors", "b"]);
    // workflows/sdxl_refiner.json's extra.requires_models
    expect(requiredModels({ checkpoints: ["sd_xl_base_1.0.safetensors", "sd_xl_refiner_1.0.safetensors"] })).toEqual([
      "checkpoints/sd_xl_base_1.0.safetensors", "checkpoints/sd_xl_refiner_1.0.safetensors"]);
    expect(requiredModels({ checkpoints: ["base.safetensors"], controlnet: "canny.safetensors", loras: [] })).toEqual([
      "checkpoints/base.safetensors", "controlnet/canny.safetensors"]);
    for (const none of [undefined, null, [], {}, 3, ""]) expect(requiredModels(none)).toEqual([]);
  });

  it("writes a model card's native size", () => {
    expect(nativeSizeText({ native_size: [64, 64] })).toBe("64×64");
    expect(nativeSizeText({})).toBeNull();
    expect(nativeSizeText(undefined)).toBeNull();
  });

  it("sizes a new latent at the native size the graph's models agree on", () => {
    const shapes = { native_size: [64, 64] as [number, number] };
    const latent = defs.get("EmptyLatentImage");
    expect(nativeSizeValues(latent, [shapes, undefined])).toEqual({ width: 64, height: 64 });
    expect(nativeSizeValues(latent, [{ native_size: [96, 32] }])).toEqual({ width: 96, height: 32 });
    // two models of different sizes, no card, or a node that makes no latent: the defaults stay
    expect(nativeSizeValues(latent, [shapes, { native_size: [128, 128] }])).toBeNull();
    expect(nativeSizeValues(latent, [undefined, {}])).toBeNull();
    expect(nativeSizeValues(defs.get("KSampler"), [shapes])).toBeNull();
    expect(nativeSizeValues(defs.get("ImageScale"), [shapes])).toBeNull();
    // Upscale Latent's width and height are a target size: a latent in, not made
    const upscale = { ...latent!, inputs: [{ ...latent!.inputs[0], name: "samples", type: "LATENT", widget: false },
      ...latent!.inputs] };
    expect(nativeSizeValues(upscale, [shapes])).toBeNull();
    // a size past the widget's range is clamped to it
    expect(nativeSizeValues(latent, [{ native_size: [4, 1e9] }])).toEqual({ width: 8, height: 16384 });
  });
});
