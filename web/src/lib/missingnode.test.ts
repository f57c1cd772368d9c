import { describe, expect, it } from "vitest";
import { graphToFlow } from "../canvas/flow";
import { documentToGraph, graphToDocument, graphToPrompt } from "./graph";
import { type Converter, loadWorkflowObject } from "./load";
import { comfyNodeSlots, missingNodeSlots, parseSlots } from "./missingnode";
import { testDefs } from "./testdefs";

const defs = testDefs();

/** ComfyUI's stable_zero123 example, cut down: StableZero123_Conditioning (#26) is not on this server. */
function zero123() {
  return {
    last_node_id: 26, last_link_id: 6, version: 0.4, groups: [],
    nodes: [
      { id: 15, type: "CheckpointLoaderSimple", pos: [0, 0], size: [300, 100], mode: 0,
        outputs: [{ name: "MODEL", type: "MODEL", links: [1] }, { name: "CLIP", type: "CLIP", links: [] },
          { name: "VAE", type: "VAE", links: [2] }], widgets_values: ["stable_zero123.ckpt"] },
      { id: 26, type: "StableZero123_Conditioning", pos: [400, 0], size: [315, 194], mode: 0,
        inputs: [{ name: "clip_vision", type: "CLIP_VISION", link: null }, { name: "init_image", type: "IMAGE", link: null },
          { name: "vae", type: "VAE", link: 2 }, { name: "width", type: "INT", widget: { name: "width" }, link: null }],
        outputs: [{ name: "positive", type: "CONDITIONING", links: [3] }, { name: "negative", type: "CONDITIONING", links: [4] },
          { name: "latent", type: "LATENT", links: [5] }],
        widgets_values: [256, 256, 4, 10, 0] },
      { id: 3, type: "KSampler", pos: [800, 0], size: [315, 262], mode: 0, inputs: [], outputs: [] },
    ],
    links: [],
  };
}

/** What the server's converter gives for it: the prompt keeps the missing node's links, no slots. */
function converted() {
  return {
    format: "steerflow.workflow", version: 1,
    prompt: {
      "15": { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "stable_zero123.ckpt" } },
      "26": { class_type: "StableZero123_Conditioning", inputs: { vae: ["15", 2] } },
      "3": { class_type: "KSampler", inputs: { seed: 1, steps: 3, cfg: 5, sampler_name: "euler", scheduler: "normal",
        denoise: 1, model: ["15", 0], positive: ["26", 0], negative: ["26", 1], latent_image: ["26", 2] } },
    },
    layout: { nodes: { "15": { pos: [0, 0] }, "26": { pos: [400, 0] }, "3": { pos: [800, 0] } }, groups: [] },
    extra: {},
  };
}

describe("a node whose type the server lacks keeps its slots (the templates drill's D2)", () => {
  it("reads a ComfyUI node's inputs (a widget's only when linked) and outputs", () => {
    const slots = comfyNodeSlots(zero123()).get("26");
    expect(slots).toEqual({
      inputs: [{ name: "clip_vision", type: "CLIP_VISION" }, { name: "init_image", type: "IMAGE" }, { name: "vae", type: "VAE" }],
      outputs: [{ name: "positive", type: "CONDITIONING" }, { name: "negative", type: "CONDITIONING" }, { name: "latent", type: "LATENT" }],
    });
  });

  it("completes the saved slots from the links (an API prompt has none)", () => {
    expect(missingNodeSlots(undefined, [{ name: "image", type: "IMAGE" }, { name: "mask" }],
      [{ slot: 2, type: "LATENT" }, { slot: 0 }])).toEqual({
      inputs: [{ name: "image", type: "IMAGE" }, { name: "mask", type: "*" }],
      outputs: [{ name: "output 0", type: "*" }, { name: "output 1", type: "*" }, { name: "LATENT", type: "LATENT" }],
    });
    const saved = { inputs: [{ name: "vae", type: "VAE" }], outputs: [{ name: "positive", type: "CONDITIONING" }] };
    expect(missingNodeSlots(saved, [{ name: "vae", type: "VAE" }, { name: "extra" }], [{ slot: 0 }])).toEqual({
      inputs: [{ name: "vae", type: "VAE" }, { name: "extra", type: "*" }], outputs: saved.outputs,
    });
    expect(parseSlots({ inputs: [{ name: "a" }] })).toEqual({ inputs: [{ name: "a", type: "*" }], outputs: [] });
    expect(parseSlots({ inputs: [{ type: "X" }] })).toBeUndefined();
    expect(parseSlots("x")).toBeUndefined();
  });

  it("opening the ComfyUI file gives the missing node its slots, every link an edge, and the prompt its links", async () => {
    const convert: Converter = async () => ({ document: converted(), warnings: [] });
    const loaded = await loadWorkflowObject(zero123(), defs, convert);
    const node = loaded.graph.nodes.find((n) => n.id === "26")!;
    expect(node.slots?.outputs.map((o) => o.name)).toEqual(["positive", "negative", "latent"]);
    expect(node.slots?.inputs.map((o) => o.name)).toEqual(["clip_vision", "init_image", "vae"]);
    const flow = graphToFlow(loaded.graph, defs);
    expect(flow.nodes.find((n) => n.id === "26")!.data.slots).toEqual(node.slots);
    expect(flow.edges.map((e) => `${e.source}:${e.sourceHandle}->${e.target}:${e.targetHandle}`).sort()).toEqual([
      "15:o0->3:i:model", "15:o2->26:i:vae", "26:o0->3:i:positive", "26:o1->3:i:negative", "26:o2->3:i:latent_image",
    ]);
    // an edge out of the missing node has its saved output's type (colour)
    expect(flow.edges.find((e) => e.source === "26" && e.sourceHandle === "o2")!.data).toEqual({ type: "LATENT" });
    const prompt = graphToPrompt(loaded.graph, defs);
    expect(prompt["26"].inputs).toEqual({ vae: ["15", 2] });
    expect(prompt["3"].inputs.latent_image).toEqual(["26", 2]);
  });

  it("saves the slots in our document's layout, and reads them back (only for a missing type)", () => {
    const graph = documentToGraph(converted(), defs).graph;
    const slots = comfyNodeSlots(zero123()).get("26")!;
    graph.nodes.find((n) => n.id === "26")!.slots = slots;
    graph.nodes.find((n) => n.id === "15")!.slots = slots; // a known type: not saved
    const doc = graphToDocument(graph, defs);
    expect(doc.layout.nodes["26"].slots).toEqual(slots);
    expect(doc.layout.nodes["15"].slots).toBeUndefined();
    const back = documentToGraph(JSON.parse(JSON.stringify(doc)), defs).graph;
    expect(back.nodes.find((n) => n.id === "26")!.slots).toEqual(slots);
    expect(back.nodes.find((n) => n.id === "15")!.slots).toBeUndefined();
  });
});

describe("a missing node's ComfyUI widget values (the power-user drill's #3)", () => {
  it("are kept raw through the canvas and a save, and filled in by the server once the type is known", async () => {
    const doc = converted();
    (doc.layout.nodes["26"] as Record<string, unknown>).widgets_values = [256, 256, 4, 10, 0];
    const graph = documentToGraph(JSON.parse(JSON.stringify(doc)), defs).graph;
    expect(graph.nodes.find((n) => n.id === "26")!.rawWidgets).toEqual({ widgets_values: [256, 256, 4, 10, 0] });
    const flow = graphToFlow(graph, defs);
    expect(flow.nodes.find((n) => n.id === "26")!.data.rawWidgets).toEqual({ widgets_values: [256, 256, 4, 10, 0] });
    const saved = graphToDocument(graph, defs);
    expect(saved.layout.nodes["26"].widgets_values).toEqual([256, 256, 4, 10, 0]);
    // the type not known: opened as it is, the server not asked
    const asked: unknown[] = [];
    const convert: Converter = async (obj) => { asked.push(obj); return { document: converted(), warnings: [] }; };
    await loadWorkflowObject(saved, defs, convert);
    expect(asked).toEqual([]);
    // known now (the pack installed): the server fills the widgets in
    const installed = { ...saved, prompt: { ...saved.prompt, "26": { ...saved.prompt["26"], class_type: "KSampler" } } };
    const loaded = await loadWorkflowObject(installed, defs, convert);
    expect(asked).toHaveLength(1);
    expect(loaded.kind).toBe("document");
  });
});
