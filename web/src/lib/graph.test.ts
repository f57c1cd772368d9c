import { describe, expect, it } from "vitest";
import {
  autoLayout, createNode, documentToGraph, type Graph, graphToDocument, graphToPrompt, isLink, nextNodeId,
  pasteNodes, promptToGraph, removeNodes, WorkflowFormatError,
} from "./graph";
import { testDefs } from "./testdefs";

const defs = testDefs();

/** The txt2img graph as the canvas holds it. */
export function txt2imgGraph(): Graph {
  const n = (id: string, type: string, x: number) => createNode(defs, type, id, [x, 0]);
  const nodes = [
    n("1", "CheckpointLoaderSimple", 0), n("2", "CLIPTextEncode", 300), n("3", "CLIPTextEncode", 300),
    n("4", "EmptyLatentImage", 300), n("5", "KSampler", 600), n("6", "VAEDecode", 900), n("7", "SaveImage", 1200),
  ];
  nodes[1].values.text = "a red cube";
  nodes[1].title = "Positive";
  nodes[4].values.seed = 42;
  const links = [
    { source: "1", slot: 1, target: "2", input: "clip" },
    { source: "1", slot: 1, target: "3", input: "clip" },
    { source: "1", slot: 0, target: "5", input: "model" },
    { source: "2", slot: 0, target: "5", input: "positive" },
    { source: "3", slot: 0, target: "5", input: "negative" },
    { source: "4", slot: 0, target: "5", input: "latent_image" },
    { source: "5", slot: 0, target: "6", input: "samples" },
    { source: "1", slot: 2, target: "6", input: "vae" },
    { source: "6", slot: 0, target: "7", input: "images" },
  ];
  return { nodes, links, groups: [] };
}

describe("graph → API format", () => {
  it("writes links as [source_id, index] and widgets as constants", () => {
    const prompt = graphToPrompt(txt2imgGraph(), defs);
    expect(Object.keys(prompt)).toEqual(["1", "2", "3", "4", "5", "6", "7"]);
    expect(prompt["5"]).toEqual({
      class_type: "KSampler",
      inputs: {
        model: ["1", 0], seed: 42, steps: 20, cfg: 8, sampler_name: "euler", scheduler: "normal",
        positive: ["2", 0], negative: ["3", 0], latent_image: ["4", 0], denoise: 1,
      },
      _meta: { title: "Sample" },
    });
    expect(prompt["2"]).toEqual({ class_type: "CLIPTextEncode", inputs: { text: "a red cube", clip: ["1", 1] }, _meta: { title: "Positive" } });
    // An unlinked optional socket is left out.
    expect(prompt["4"].inputs).toEqual({ width: 512, height: 512, batch_size: 1 });
  });

  it("a linked widget input sends the link, not the constant", () => {
    const g = txt2imgGraph();
    g.nodes.push(createNode(defs, "PrimitiveInt", "8", [0, 300]));
    g.links.push({ source: "8", slot: 0, target: "5", input: "seed" });
    expect(graphToPrompt(g, defs)["5"].inputs.seed).toEqual(["8", 0]);
  });
});

describe("document round trip", () => {
  it("graph → document → graph keeps everything", () => {
    const g = txt2imgGraph();
    g.viewport = { x: 10, y: -20, zoom: 0.75 };
    g.nodes[0].size = [300, 120];
    const doc = graphToDocument(g, defs);
    expect(doc.format).toBe("steerflow.workflow");
    expect(doc.version).toBe(1);
    expect(doc.layout.nodes["2"]).toEqual({ pos: [300, 0], title: "Positive" });
    expect(doc.layout.nodes["5"].control).toEqual({ seed: "randomize" });
    const back = documentToGraph(JSON.parse(JSON.stringify(doc)), defs);
    expect(back.warnings).toEqual([]);
    expect(back.graph.viewport).toEqual(g.viewport);
    expect(back.graph.nodes).toEqual(g.nodes);
    expect(new Set(back.graph.links.map((l) => JSON.stringify(l)))).toEqual(new Set(g.links.map((l) => JSON.stringify(l))));
    expect(graphToDocument(back.graph, defs)).toEqual(doc);
  });

  it("reads a document written by the engine (prompt_to_document)", () => {
    const doc = {
      format: "steerflow.workflow", version: 1,
      prompt: {
        "1": { class_type: "PrimitiveInt", inputs: { value: 3 }, _meta: { title: "Three" } },
        "2": { class_type: "ShowValue", inputs: { value: ["1", 0] } },
      },
      layout: { nodes: { "1": { pos: [0.0, 0.0], title: "Three" }, "2": { pos: [320.0, 0.0] } }, groups: [] },
      extra: {},
    };
    const { graph, warnings } = documentToGraph(doc, defs);
    expect(warnings).toEqual([]);
    expect(graph.nodes[0]).toEqual({ id: "1", type: "PrimitiveInt", pos: [0, 0], values: { value: 3 }, title: "Three",
      control: { value: "fixed" } });
    expect(graph.links).toEqual([{ source: "1", slot: 0, target: "2", input: "value" }]);
  });

  it("refuses newer versions and non-documents", () => {
    expect(() => documentToGraph({ format: "steerflow.workflow", version: 99, prompt: {} }, defs)).toThrow(/newer/);
    expect(() => documentToGraph({ nodes: [] }, defs)).toThrow(WorkflowFormatError);
  });
});

describe("API format → graph", () => {
  it("lays out nodes by depth and fills defaults", () => {
    const prompt = graphToPrompt(txt2imgGraph(), defs);
    delete (prompt["5"].inputs as Record<string, unknown>).steps;
    const { graph, warnings } = promptToGraph(prompt, defs);
    expect(warnings).toEqual([]);
    const ks = graph.nodes.find((n) => n.id === "5")!;
    expect(ks.values.steps).toBe(20);
    expect(ks.control).toEqual({ seed: "fixed" });
    const x = (id: string) => graph.nodes.find((n) => n.id === id)!.pos[0];
    expect(x("1")).toBe(0);
    expect(x("2")).toBeGreaterThan(x("1"));
    expect(x("5")).toBeGreaterThan(x("2"));
    expect(x("7")).toBeGreaterThan(x("6"));
  });

  it("keeps unknown node types and warns", () => {
    const { graph, warnings } = promptToGraph({
      "1": { class_type: "Mystery", inputs: { a: 1, b: ["2", 0] } },
      "2": { class_type: "PrimitiveInt", inputs: { value: 1, bogus: 2 } },
    }, defs);
    expect(warnings.join("\n")).toMatch(/unknown node type Mystery/);
    expect(warnings.join("\n")).toMatch(/unknown input 'bogus'/);
    expect(graph.nodes[0].values).toEqual({ a: 1 });
    expect(graphToPrompt(graph, defs)["1"].inputs).toEqual({ a: 1, b: ["2", 0] });
  });

  it("drops links to missing nodes", () => {
    const { graph, warnings } = promptToGraph({ "1": { class_type: "ShowValue", inputs: { value: ["9", 0] } } }, defs);
    expect(graph.links).toEqual([]);
    expect(warnings[0]).toMatch(/missing node 9/);
  });
});

describe("helpers", () => {
  it("isLink", () => {
    expect(isLink(["1", 0])).toBe(true);
    expect(isLink([1, 0])).toBe(true);
    expect(isLink(["1", 0.5])).toBe(false);
    expect(isLink(["1", 0, 2])).toBe(false);
    expect(isLink("1")).toBe(false);
  });
  it("nextNodeId", () => {
    expect(nextNodeId([])).toBe("1");
    expect(nextNodeId(["3", "10", "x"])).toBe("11");
  });
  it("autoLayout survives cycles", () => {
    const pos = autoLayout(["a", "b"], [{ source: "a", slot: 0, target: "b", input: "x" }, { source: "b", slot: 0, target: "a", input: "x" }]);
    expect(pos.size).toBe(2);
  });
  it("removeNodes drops links too", () => {
    const g = removeNodes(txt2imgGraph(), new Set(["5"]));
    expect(g.nodes.map((n) => n.id)).not.toContain("5");
    expect(g.links.some((l) => l.source === "5" || l.target === "5")).toBe(false);
  });
  it("pasteNodes renumbers and keeps inner links only", () => {
    const g = txt2imgGraph();
    const clip = { nodes: g.nodes.filter((n) => ["5", "6"].includes(n.id)), links: g.links };
    const { graph, ids } = pasteNodes(g, clip, [50, 50]);
    expect(ids).toEqual(["8", "9"]);
    expect(graph.nodes.find((n) => n.id === "8")!.pos).toEqual([650, 50]);
    const pastedLinks = graph.links.filter((l) => ids.includes(l.target));
    expect(pastedLinks).toEqual([{ source: "8", slot: 0, target: "9", input: "samples" }]);
    // the clipboard's node objects are not shared with the pasted ones
    graph.nodes.find((n) => n.id === "8")!.values.seed = 1;
    expect(g.nodes.find((n) => n.id === "5")!.values.seed).toBe(42);
  });
});
