import { describe, expect, it } from "vitest";
import { createNode, type Graph } from "../lib/graph";
import { testDefs } from "../lib/testdefs";
import { edgeToLink, flowToGraph, graphToFlow, inputOf, slotOf } from "./flow";

describe("React Flow glue", () => {
  const defs = testDefs();
  it("round-trips a graph through nodes and edges", () => {
    const graph: Graph = {
      nodes: [
        { ...createNode(defs, "CheckpointLoaderSimple", "1", [0, 0]), size: [315, 98] },
        { ...createNode(defs, "CLIPTextEncode", "2", [300, 10]), title: "Positive" },
      ],
      links: [{ source: "1", slot: 1, target: "2", input: "clip" }],
      groups: [{ title: "g" }],
      extra: { a: 1 },
    };
    const { nodes, edges } = graphToFlow(graph, defs);
    expect(nodes[0]).toMatchObject({ id: "1", type: "sf", position: { x: 0, y: 0 }, width: 315 });
    expect(edges[0]).toMatchObject({ source: "1", sourceHandle: "o1", target: "2", targetHandle: "i:clip" });
    expect(edges[0].style).toEqual({ stroke: expect.any(String) });
    expect(edgeToLink(edges[0])).toEqual(graph.links[0]);
    expect(flowToGraph(nodes, edges, { groups: graph.groups, extra: graph.extra })).toEqual({ ...graph, viewport: undefined });
  });
  it("parses handle ids", () => {
    expect(slotOf("o3")).toBe(3);
    expect(slotOf("i:x")).toBeNaN();
    expect(inputOf("i:latent_image")).toBe("latent_image");
    expect(inputOf("o1")).toBe("");
  });
});
