import { describe, expect, it } from "vitest";
import { adoptWidget } from "./primitive";
import { type Defs, parseObjectInfo } from "./schema";

const defs: Defs = parseObjectInfo({
  PrimitiveInt: { input: { required: { value: ["INT", { default: 0, min: -9223372036854775808, max: 9223372036854775807 }] } },
    output: ["INT"], name: "PrimitiveInt", display_name: "Int", category: "utils/primitive" },
  PrimitiveString: { input: { required: { value: ["STRING", { default: "" }] } }, output: ["STRING"], name: "PrimitiveString",
    display_name: "String", category: "utils/primitive" },
  KSampler: { input: { required: { seed: ["INT", { default: 0, min: 0, max: 18446744073709551615, control_after_generate: true }],
    steps: ["INT", { default: 20, min: 1, max: 10000 }], text: ["STRING", { default: "" }] } },
    output: ["LATENT"], name: "KSampler", display_name: "Sample", category: "sampling" },
} as never);

describe("adoptWidget", () => {
  const sampler = { type: "KSampler", values: { seed: 42, steps: 20, text: "hi" }, control: { seed: "fixed" as const } };
  const int = { type: "PrimitiveInt", values: { value: 0 } };

  it("a primitive's first link into a widget takes its value and its control_after_generate", () => {
    expect(adoptWidget(int, sampler, "seed", true, defs)).toEqual({ values: { value: 42 }, control: { value: "fixed" } });
    const random = { ...sampler, control: { seed: "randomize" as const } };
    expect(adoptWidget(int, random, "seed", true, defs)?.control).toEqual({ value: "randomize" });
    // a number without a control of its own: "fixed", as ComfyUI's Primitive offers
    expect(adoptWidget(int, sampler, "steps", true, defs)).toEqual({ values: { value: 20 }, control: { value: "fixed" } });
    expect(adoptWidget({ type: "PrimitiveString", values: { value: "" } }, sampler, "text", true, defs)?.values).toEqual({ value: "hi" });
  });

  it("leaves the primitive as it is for a later link, another type, or a value it cannot hold", () => {
    expect(adoptWidget(int, sampler, "seed", false, defs)).toBeNull();
    expect(adoptWidget(int, sampler, "text", true, defs)).toBeNull();
    expect(adoptWidget({ type: "KSampler", values: {} }, sampler, "seed", true, defs)).toBeNull();
    const huge = { ...sampler, values: { ...sampler.values, seed: "18446744073709551615" } };
    expect(adoptWidget(int, huge, "seed", true, defs)).toBeNull();
  });
});

describe("a primitive's control in the document", () => {
  it("is saved and read back (the Int has no control_after_generate of its own)", async () => {
    const { documentToGraph, graphToDocument } = await import("./graph");
    const graph = {
      nodes: [{ id: "1", type: "PrimitiveInt", pos: [0, 0] as [number, number], values: { value: 42 }, control: { value: "randomize" as const } }],
      links: [], groups: [], extra: {},
    };
    const back = documentToGraph(JSON.parse(JSON.stringify(graphToDocument(graph as never, defs))), defs).graph;
    expect(back.nodes[0].control).toEqual({ value: "randomize" });
  });
});
