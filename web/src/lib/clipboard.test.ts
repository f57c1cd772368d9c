import { describe, expect, it } from "vitest";
import { clipText, readPasted } from "./clipboard";

const png = { name: "image.png", type: "image/png" };

describe("readPasted (Ctrl+V on the canvas, as ComfyUI reads the clipboard)", () => {
  it("takes an image as a dropped image", () => {
    expect(readPasted([png], "")).toEqual({ kind: "image", file: png });
    expect(readPasted([{ name: "notes.txt", type: "text/plain" }], "hello")).toEqual({ kind: "nodes" });
  });

  it("opens a workflow's JSON text: ComfyUI's UI format, an API prompt, Steerflow's document", () => {
    const ui = { last_node_id: 1, nodes: [{ id: 1, type: "SaveImage" }], links: [] };
    const api = { "3": { class_type: "KSampler", inputs: { seed: 18446744073709551615n } } };
    const doc = { format: "steerflow.workflow", version: 1, prompt: {}, layout: { nodes: {} }, extra: {} };
    expect(readPasted([], JSON.stringify(ui)).kind).toBe("workflow");
    const apiText = '{"3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615}}}';
    const got = readPasted([], apiText);
    expect(got.kind).toBe("workflow");
    // 64-bit seeds stay exact
    expect((got as { workflow: typeof api }).workflow["3"].inputs.seed).toBe("18446744073709551615");
    expect(readPasted([], JSON.stringify(doc)).kind).toBe("workflow");
    expect(readPasted([], JSON.stringify({ prompt: { "1": { class_type: "X", inputs: {} } } })).kind).toBe("workflow");
  });

  it("keeps nodes copied on the canvas first, and any other text pastes the canvas's own clipboard", () => {
    const clip = { nodes: [{ id: "1" }], links: [] };
    expect(readPasted([png], clipText(clip))).toEqual({ kind: "clip", clip });
    for (const text of ["", "a red circle", "{not json", '{"a": 1}', "[1, 2]"]) expect(readPasted([], text), text).toEqual({ kind: "nodes" });
  });
});
