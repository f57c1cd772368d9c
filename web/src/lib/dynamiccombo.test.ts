/**
 * ComfyUI's DynamicCombo and MatchType inputs (Resize Image/Mask): the canvas shows only the
 * chosen option's inputs and sends only those, named `resize_type.width` as ComfyUI does.
 * The fixture is the server's schema of the node (tests/test_resize_image_mask.py keeps it so).
 */
import { describe, expect, it } from "vitest";
import resizeInfo from "./fixtures/resize_image_mask.json";
import { graphToPrompt, promptToGraph } from "./graph";
import { type Defs, defaultValues, isActive, type ObjectInfo, parseObjectInfo, visibleInputs } from "./schema";
import { testObjectInfo } from "./testdefs";
import { typesMatch } from "./types";

function defs(): Defs {
  return parseObjectInfo({ ...testObjectInfo(), ...(resizeInfo as unknown as ObjectInfo) });
}

const names = (inputs: { name: string }[]) => inputs.map((i) => i.name);

describe("DynamicCombo (Resize Image/Mask)", () => {
  const d = defs();
  const node = d.get("ResizeImageMaskNode")!;

  it("parses the combo, then every input its options bring, once per name", () => {
    const combo = node.inputs.find((i) => i.name === "resize_type")!;
    expect(combo).toMatchObject({ type: "COMBO", widget: true });
    expect(combo.choices).toEqual([
      "scale dimensions", "scale by multiplier", "scale longer dimension", "scale shorter dimension",
      "scale width", "scale height", "scale total pixels", "match size", "scale to multiple",
    ]);
    const width = node.inputs.find((i) => i.name === "resize_type.width")!;
    expect(width).toMatchObject({ type: "INT", widget: true, label: "width" });
    expect(width.parent).toEqual({ name: "resize_type", keys: ["scale dimensions", "scale width"] });
    expect(width.options).toMatchObject({ min: 0, max: 16384, default: 512 });
    const match = node.inputs.find((i) => i.name === "resize_type.match")!;
    expect(match).toMatchObject({ type: "IMAGE,MASK", widget: false });
  });

  it("shows only the chosen option's inputs", () => {
    const values = defaultValues(node);
    expect(values.resize_type).toBe("scale dimensions");
    const shown = (v: Record<string, unknown>) => names(visibleInputs(node.inputs, new Set(), v));
    expect(shown(values)).toEqual([
      "input", "resize_type", "resize_type.width", "resize_type.height", "resize_type.crop", "scale_method",
    ]);
    expect(shown({ ...values, resize_type: "scale by multiplier" })).toEqual([
      "input", "resize_type", "resize_type.multiplier", "scale_method",
    ]);
    expect(shown({ ...values, resize_type: "match size" })).toEqual([
      "input", "resize_type", "resize_type.match", "resize_type.crop", "scale_method",
    ]);
    const multiple = node.inputs.find((i) => i.name === "resize_type.multiple")!;
    expect(isActive(multiple, { resize_type: "scale to multiple" })).toBe(true);
    expect(isActive(multiple, {}, node.inputs)).toBe(false); // the default option has no `multiple`
  });

  it("sends the chosen option's inputs with dotted names, and its links", () => {
    const { graph, warnings } = promptToGraph({
      "1": { class_type: "LoadImage", inputs: { image: "cat.png" } },
      "2": { class_type: "ResizeImageMaskNode", inputs: {
        input: ["1", 0], resize_type: "match size", "resize_type.match": ["1", 1],
        "resize_type.crop": "disabled", scale_method: "bilinear" } },
    }, d);
    expect(warnings).toEqual([]);
    expect(graphToPrompt(graph, d)["2"].inputs).toEqual({
      input: ["1", 0], resize_type: "match size", "resize_type.match": ["1", 1],
      "resize_type.crop": "disabled", scale_method: "bilinear",
    });
    // Choosing another option drops the old one's inputs (and its link) from the prompt.
    const node2 = graph.nodes.find((n) => n.id === "2")!;
    node2.values = { ...node2.values, resize_type: "scale by multiplier", "resize_type.multiplier": 1.5 };
    expect(graphToPrompt(graph, d)["2"].inputs).toEqual({
      input: ["1", 0], resize_type: "scale by multiplier", "resize_type.multiplier": 1.5, scale_method: "bilinear",
    });
  });
});

describe("MatchType", () => {
  it("types the input by its template and the output as the inputs it follows", () => {
    const node = defs().get("ResizeImageMaskNode")!;
    expect(node.inputs[0]).toMatchObject({ name: "input", type: "IMAGE,MASK", match: "input_type", widget: false });
    expect(node.outputs).toEqual([{ type: "IMAGE,MASK", name: "resized", tooltip: undefined }]);
    expect(typesMatch(node.outputs[0].type, "IMAGE")).toBe(true);
    expect(typesMatch(node.outputs[0].type, "LATENT")).toBe(false);
  });
});
