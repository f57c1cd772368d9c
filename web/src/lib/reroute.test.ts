import { describe, expect, it } from "vitest";
import { createNode, documentToGraph, type Graph, graphToDocument, graphToPrompt } from "./graph";
import { downstreamTypes, NOTE, REROUTE, rerouteType, sourceResolver, splitLink } from "./reroute";
import { testDefs } from "./testdefs";
import { checkConnection, type LinkRef } from "./types";

const defs = testDefs();

/** Int 5 → reroute 10 → reroute 11 → Int Math.a; Int Math → Show Value; a note 12. */
function chain(): Graph {
  const nodes = [
    createNode(defs, "PrimitiveInt", "1", [0, 0]),
    createNode(defs, "IntMath", "2", [400, 0]),
    createNode(defs, "ShowValue", "3", [700, 0]),
    createNode(defs, REROUTE, "10", [200, 50]),
    createNode(defs, REROUTE, "11", [300, 50]),
    createNode(defs, NOTE, "12", [0, 300]),
  ];
  nodes[0].values.value = 5;
  nodes[5].values.text = "remember: a + 4";
  const links: LinkRef[] = [
    { source: "1", slot: 0, target: "10", input: "input" },
    { source: "10", slot: 0, target: "11", input: "input" },
    { source: "11", slot: 0, target: "2", input: "a" },
    { source: "2", slot: 0, target: "3", input: "value" },
  ];
  return { nodes, links, groups: [] };
}

const viewOf = (g: Graph) => ({
  nodeType: (id: string) => g.nodes.find((n) => n.id === id)?.type,
  links: g.links,
});

describe("link resolution through reroutes", () => {
  it("follows a chain of reroutes to the real source", () => {
    const g = chain();
    const resolve = sourceResolver(g.links, viewOf(g).nodeType);
    expect(resolve("11", 0)).toEqual({ source: "1", slot: 0 });
    expect(resolve("2", 0)).toEqual({ source: "2", slot: 0 });
  });

  it("gives null for an unfed reroute and for a loop", () => {
    const g = chain();
    g.links = g.links.filter((l) => l.target !== "10");
    expect(sourceResolver(g.links, viewOf(g).nodeType)("11", 0)).toBeNull();
    g.links.push({ source: "11", slot: 0, target: "10", input: "input" });
    expect(sourceResolver(g.links, viewOf(g).nodeType)("11", 0)).toBeNull();
  });

  it("a reroute carries its source's type, or * while unfed", () => {
    const g = chain();
    expect(rerouteType(viewOf(g), defs, "11")).toBe("INT");
    expect(downstreamTypes(viewOf(g), defs, "10")).toEqual(["INT"]);
    g.links = g.links.filter((l) => l.target !== "10");
    expect(rerouteType(viewOf(g), defs, "11")).toBe("*");
  });

  it("the prompt links the real source and leaves reroutes and notes out", () => {
    const prompt = graphToPrompt(chain(), defs);
    expect(Object.keys(prompt).sort()).toEqual(["1", "2", "3"]);
    expect(prompt["2"].inputs.a).toEqual(["1", 0]);
    expect(prompt["3"].inputs.value).toEqual(["2", 0]);
  });

  it("an input behind an unfed reroute is left out of the prompt", () => {
    const g = chain();
    g.links = g.links.filter((l) => l.target !== "10");
    expect(graphToPrompt(g, defs)["2"].inputs.a).toBeUndefined();
  });

  it("splitLink puts a reroute on a link", () => {
    const link = { source: "2", slot: 0, target: "3", input: "value" };
    const links = splitLink([link], link, "20");
    expect(links).toEqual([
      { source: "2", slot: 0, target: "20", input: "input" },
      { source: "20", slot: 0, target: "3", input: "value" },
    ]);
  });
});

describe("reroutes refuse links of the wrong type", () => {
  it("an INT reroute cannot feed a LATENT input", () => {
    const g = chain();
    g.nodes.push(createNode(defs, "VAEDecode", "4", [900, 0]));
    const check = checkConnection(viewOf(g), defs, { source: "11", slot: 0, target: "4", input: "samples" });
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.reason).toMatch(/type mismatch.*LATENT.*INT/);
  });

  it("a reroute feeding an INT input refuses a LATENT source", () => {
    const g = chain();
    g.nodes.push(createNode(defs, "EmptyLatentImage", "4", [0, 200]));
    const check = checkConnection(viewOf(g), defs, { source: "4", slot: 0, target: "10", input: "input" });
    expect(check.ok).toBe(false);
    if (!check.ok) expect(check.reason).toMatch(/reroute feeds \(INT\).*LATENT/);
  });

  it("an unfed reroute takes anything and passes it on", () => {
    const g = chain();
    g.nodes.push(createNode(defs, REROUTE, "20", [0, 200]));
    expect(checkConnection(viewOf(g), defs, { source: "20", slot: 0, target: "3", input: "value" }).ok).toBe(true);
    expect(checkConnection(viewOf(g), defs, { source: "1", slot: 0, target: "20", input: "input" }).ok).toBe(true);
  });

  it("refuses a loop of reroutes and links to notes", () => {
    const g = chain();
    expect(checkConnection(viewOf(g), defs, { source: "11", slot: 0, target: "10", input: "input" }).ok).toBe(false);
    expect(checkConnection(viewOf(g), defs, { source: "1", slot: 0, target: "12", input: "text" }).ok).toBe(false);
  });
});

describe("reroutes and notes in our document", () => {
  it("are saved in the layout and restored, never in the prompt", () => {
    const doc = graphToDocument(chain(), defs);
    expect(Object.keys(doc.prompt).sort()).toEqual(["1", "2", "3"]);
    expect(doc.layout.reroutes).toEqual({ 10: { pos: [200, 50], input: ["1", 0] }, 11: { pos: [300, 50], input: ["10", 0] } });
    expect(doc.layout.nodes["2"].via).toEqual({ a: "11" });
    expect(doc.layout.notes?.["12"]).toMatchObject({ pos: [0, 300], text: "remember: a + 4" });
    const { graph, warnings } = documentToGraph(JSON.parse(JSON.stringify(doc)), defs);
    expect(warnings).toEqual([]);
    const key = (l: LinkRef) => `${l.source}:${l.slot}>${l.target}:${l.input}`;
    expect(graph.links.map(key).sort()).toEqual(chain().links.map(key).sort());
    expect(graph.nodes.find((n) => n.id === "12")).toMatchObject({ type: NOTE, values: { text: "remember: a + 4" } });
    expect(graphToDocument(graph, defs)).toEqual(doc);
  });

  it("keeps a MarkdownNote's kind (a ComfyUI file's note saved back stays markdown)", () => {
    const doc = graphToDocument(chain(), defs);
    doc.layout.notes!["12"].markdown = true;
    const { graph } = documentToGraph(JSON.parse(JSON.stringify(doc)), defs);
    expect(graphToDocument(graph, defs).layout.notes?.["12"].markdown).toBe(true);
  });

  it("keeps the prompt's link when the document was edited past its reroute", () => {
    const doc = graphToDocument(chain(), defs);
    doc.prompt["2"].inputs.a = 7; // edited by hand: no longer linked
    const { graph, warnings } = documentToGraph(doc, defs);
    expect(warnings.join()).toMatch(/no longer comes through reroute 11/);
    expect(graph.links.some((l) => l.target === "2")).toBe(false);
    expect(graphToPrompt(graph, defs)["2"].inputs.a).toBe(7);
  });

  it("drops malformed entries with a warning", () => {
    const doc = graphToDocument(chain(), defs) as unknown as { layout: Record<string, Record<string, unknown>> };
    doc.layout.notes["1"] = { pos: [0, 0], text: "clashes with node 1" };
    doc.layout.reroutes["13"] = "nonsense";
    const { graph, warnings } = documentToGraph(doc, defs);
    expect(warnings.length).toBe(2);
    expect(graph.nodes.filter((n) => n.type === "PrimitiveInt").length).toBe(1);
  });
});
