import { describe, expect, it } from "vitest";
import {
  clampNumber, defaultValues, nextControlValue, parseNodeSchema, randomSeed, visibleInputs, widgetInputs,
} from "./schema";
import { testDefs } from "./testdefs";

describe("schema → node definition", () => {
  const defs = testDefs();

  it("keeps input order and splits widgets from sockets", () => {
    const ks = defs.get("KSampler")!;
    expect(ks.displayName).toBe("Sample");
    expect(ks.inputs.map((i) => i.name)).toEqual([
      "model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative", "latent_image", "denoise",
    ]);
    expect(widgetInputs(ks).map((i) => i.name)).toEqual(["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]);
    const model = ks.inputs[0];
    expect(model).toMatchObject({ type: "MODEL", widget: false, required: true });
    const sampler = ks.inputs.find((i) => i.name === "sampler_name")!;
    expect(sampler.type).toBe("COMBO");
    expect(sampler.choices).toContain("euler");
    expect(ks.outputs).toEqual([{ type: "LATENT", name: "LATENT", tooltip: undefined }]);
  });

  it("marks optional inputs and forceInput primitives as sockets", () => {
    const d = defs.get("ImageOrMask")!;
    const forced = d.inputs.find((i) => i.name === "forced")!;
    expect(forced).toMatchObject({ widget: false, required: false, type: "INT" });
    const latent = defs.get("EmptyLatentImage")!;
    expect(latent.inputs.find((i) => i.name === "vae")).toMatchObject({ required: false, widget: false });
  });

  it("gives defaults for every widget", () => {
    expect(defaultValues(defs.get("KSampler")!)).toEqual({
      seed: 0, steps: 20, cfg: 8, sampler_name: "euler", scheduler: "normal", denoise: 1,
    });
    // A combo without a default takes its first choice.
    expect(defaultValues(defs.get("CheckpointLoaderSimple")!)).toEqual({ ckpt_name: "steerflow-tiny" });
  });

  it("reads ComfyUI's newer COMBO shape and output names", () => {
    const d = parseNodeSchema("X", {
      input: { required: { mode: ["COMBO", { options: ["a", "b"], default: "b" }] } },
      output: ["IMAGE"], output_name: ["pic"],
    });
    expect(d.inputs[0]).toMatchObject({ type: "COMBO", choices: ["a", "b"], widget: true });
    expect(d.outputs[0]).toMatchObject({ type: "IMAGE", name: "pic" });
    expect(d.displayName).toBe("X");
  });

  it("clamps numbers and keeps seeds JSON-safe", () => {
    const steps = defs.get("KSampler")!.inputs.find((i) => i.name === "steps")!;
    expect(clampNumber(steps, 0)).toBe(1);
    expect(clampNumber(steps, 3.6)).toBe(4);
    expect(clampNumber(steps, 1e9)).toBe(10000);
    const seed = defs.get("KSampler")!.inputs.find((i) => i.name === "seed")!;
    expect(seed.options.control_after_generate).toBe(true);
    for (const r of [0, 0.5, 0.999999]) {
      const s = randomSeed(seed, () => r);
      expect(Number.isSafeInteger(s)).toBe(true);
      expect(s).toBeGreaterThanOrEqual(0);
    }
    expect(nextControlValue(seed, 5, "increment")).toBe(6);
    expect(nextControlValue(seed, 0, "decrement")).toBe(0);
    expect(nextControlValue(seed, 5, "fixed")).toBe(5);
    expect(nextControlValue(seed, 5, "randomize", () => 0.25)).toBe(2 ** 48);
  });
});

describe("visibleInputs (ComfyUI's Autogrow)", () => {
  // BatchImagesNode's /object_info entry, as ComfyUI's backend (and ours) writes it
  const grow = parseNodeSchema("BatchImagesNode", {
    input: {
      required: {
        images: ["COMFY_AUTOGROW_V3", { template: { input: { required: { image: ["IMAGE", {}] } }, prefix: "image", min: 2, max: 6 } }],
      },
    },
    input_order: { required: ["images"] },
    output: ["IMAGE"],
  });
  const names = (linked: string[]) => visibleInputs(grow.inputs, new Set(linked)).map((i) => i.name);

  it("expands the group into its slots, named as in the API prompt", () => {
    expect(grow.inputs.map((i) => [i.name, i.label, i.type, i.required, i.widget, i.autogrow])).toEqual(
      [0, 1, 2, 3, 4, 5].map((k) => [`images.image${k}`, `image${k}`, "IMAGE", k < 2, false, "images"]));
  });

  it("shows the required inputs, then one free socket past the last linked", () => {
    expect(names([])).toEqual(["images.image0", "images.image1"]);
    expect(names(["images.image0", "images.image1"])).toEqual(
      ["images.image0", "images.image1", "images.image2"]);
    expect(names(["images.image0", "images.image3"])).toEqual(
      ["images.image0", "images.image1", "images.image2", "images.image3", "images.image4"]);
    expect(names(["images.image5"])).toHaveLength(6); // never past max
  });

  it("reads named slots, an optional template, and keeps the schema's order", () => {
    const math = parseNodeSchema("ComfyMathExpression", {
      input: {
        required: {
          expression: ["STRING", { default: "a + b", multiline: true }],
          values: ["COMFY_AUTOGROW_V3", { template: { input: { optional: { value: ["FLOAT,INT,BOOLEAN", {}] } }, names: ["a", "b", "c"], min: 1 } }],
          after: ["INT", {}],
        },
      },
      input_order: { required: ["expression", "values", "after"] },
    });
    expect(math.inputs.map((i) => [i.name, i.required, i.widget])).toEqual([
      ["expression", true, true], ["values.a", false, false], ["values.b", false, false],
      ["values.c", false, false], ["after", true, true]]);
    expect(visibleInputs(math.inputs, new Set(["values.a"])).map((i) => i.name)).toEqual(
      ["expression", "values.a", "values.b", "after"]);
  });

  it("bounds a hostile entry and forces a primitive template to a socket", () => {
    const odd = parseNodeSchema("X", {
      input: {
        required: {
          many: ["COMFY_AUTOGROW_V3", { template: { input: { required: { n: ["INT", { default: 1 }] } }, prefix: "n", min: 1e9, max: 1e9 } }],
          none: ["COMFY_AUTOGROW_V3", { template: { input: {}, prefix: "x" } }],
          junk: ["COMFY_AUTOGROW_V3", null],
        },
      },
    });
    expect(odd.inputs).toHaveLength(100);
    expect(odd.inputs.every((i) => i.type === "INT" && !i.widget && i.required)).toBe(true);
  });

  it("leaves other nodes' inputs alone", () => {
    const plain = parseNodeSchema("X", { input: { optional: { a: ["INT", {}], b: ["IMAGE", {}] } } });
    expect(visibleInputs(plain.inputs, new Set()).map((i) => i.name)).toEqual(["a", "b"]);
    expect(plain.inputs.every((i) => i.autogrow === undefined)).toBe(true);
  });
});

describe("helpButtonLabel (a node's ? button)", () => {
  it("names the node: its title, else its type's display name", async () => {
    const { helpButtonLabel } = await import("./schema");
    const defs = testDefs();
    expect(helpButtonLabel({ type: "KSampler" }, defs)).toBe("Help: Sample");
    expect(helpButtonLabel({ type: "KSampler", title: "Refiner" }, defs)).toBe("Help: Refiner");
    expect(helpButtonLabel({ type: "NoSuchNode" }, defs)).toBe("Help: NoSuchNode");
  });
});
