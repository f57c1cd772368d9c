import { describe, expect, it } from "vitest";
import { clipText, pastedInputs, readPasted } from "./clipboard";
import type { Graph, GraphLink } from "./graph";
import { testDefs } from "./testdefs";

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

describe("pastedInputs (Ctrl+Shift+V keeps the links into the pasted nodes)", () => {
  const defs = testDefs();
  const node = (id: string, type: string) => ({ id, type, pos: [0, 0] as [number, number], values: {} });
  // a KSampler "3" copied with its inputs, pasted as "30"
  const inputs: GraphLink[] = [
    { source: "4", slot: 0, target: "3", input: "model" },
    { source: "6", slot: 0, target: "3", input: "positive" },
    { source: "5", slot: 0, target: "3", input: "latent_image" },
  ];
  const sources = { "4": "CheckpointLoaderSimple", "6": "CLIPTextEncode", "5": "EmptyLatentImage" };
  const idMap = new Map([["3", "30"]]);

  it("keeps them in the graph they were copied from", () => {
    const graph: Graph = { nodes: [node("4", "CheckpointLoaderSimple"), node("6", "CLIPTextEncode"),
      node("5", "EmptyLatentImage"), node("30", "KSampler")], links: [], groups: [] };
    const { kept, dropped } = pastedInputs(graph, inputs, sources, idMap, defs);
    expect(dropped).toBe(0);
    expect(kept.map((l) => [l.source, l.target, l.input])).toEqual([["4", "30", "model"], ["6", "30", "positive"],
      ["5", "30", "latent_image"]]);
  });

  it("drops those whose ids name other nodes in another graph (the veteran's walk: a LATENT into model)", () => {
    const graph: Graph = { nodes: [node("4", "EmptyLatentImage"), node("6", "LoadImage"), node("30", "KSampler")], groups: [],
      links: [] };
    expect(pastedInputs(graph, inputs, sources, idMap, defs)).toEqual({ kept: [], dropped: 3 });
    // an older clipboard without the sources: the link rules still refuse the wrong types
    expect(pastedInputs(graph, inputs, undefined, idMap, defs)).toEqual({ kept: [], dropped: 3 });
  });
});
