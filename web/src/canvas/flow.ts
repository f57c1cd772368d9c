/** React Flow nodes and edges ⇄ the plain graph model. */

import type { Edge, Node } from "@xyflow/react";
import { type Graph, type GraphLink, type GraphNode, linkId, type NodeMode, type RawWidgets, type Vec2 } from "../lib/graph";
import type { NodeSlots } from "../lib/missingnode";
import { NOTE, outputType, REROUTE } from "../lib/reroute";
import type { ControlMode, Defs } from "../lib/schema";
import { typeColor } from "../lib/types";

export type SfNodeData = {
  type: string;
  title?: string;
  values: Record<string, unknown>;
  control?: Record<string, ControlMode>;
  /** The size the document gave the node (its width is applied; the height grows with content). */
  size?: Vec2;
  mode?: NodeMode;
  color?: string;
  pinned?: boolean;
  collapsed?: boolean;
  /** A node of a type the server lacks: the slots its saved document gave it (lib/missingnode.ts). */
  slots?: NodeSlots;
  /** A node of a type the server lacks: its ComfyUI widget values, kept raw. */
  rawWidgets?: RawWidgets;
};

/** `sf`: a node that runs; `reroute` and `note`: canvas-only (lib/reroute.ts). */
export type SfNode = Node<SfNodeData, "sf" | "reroute" | "note">;
export type SfEdge = Edge;

export const outHandle = (slot: number) => `o${slot}`;
/**
 * An output dot's classes: `nokey` keeps React Flow's Shift selection box from taking a
 * press on it, so Shift+drag from an output starts a link drag (ComfyUI's "move these
 * links", useLinking's moveOutputLinks).
 */
export const OUTPUT_HANDLE = "sf-handle nokey";
export const inHandle = (name: string) => `i:${name}`;
export const slotOf = (handle: string | null | undefined) => (handle && handle.startsWith("o") ? Number(handle.slice(1)) : NaN);
export const inputOf = (handle: string | null | undefined) => (handle && handle.startsWith("i:") ? handle.slice(2) : "");

export function toFlowNode(n: GraphNode): SfNode {
  const node: SfNode = {
    id: n.id,
    type: n.type === REROUTE ? "reroute" : n.type === NOTE ? "note" : "sf",
    position: { x: n.pos[0], y: n.pos[1] },
    data: { type: n.type, title: n.title, values: n.values, control: n.control, size: n.size },
  };
  if (n.mode) node.data.mode = n.mode;
  if (n.color) node.data.color = n.color;
  if (n.collapsed) node.data.collapsed = true;
  if (n.slots) node.data.slots = n.slots;
  if (n.rawWidgets) node.data.rawWidgets = n.rawWidgets;
  if (n.pinned) {
    node.data.pinned = true;
    node.draggable = false; // pinned: stays where it is
  }
  if (n.size) node.width = n.size[0];
  return node;
}

/** A link as a React Flow edge, coloured by `type` (default: the source type's output type). */
export function toFlowEdge(l: GraphLink, defs: Defs, sourceType?: string, outType?: string): SfEdge {
  const type = outType ?? (sourceType ? defs.get(sourceType)?.outputs[l.slot]?.type : undefined);
  return {
    id: linkId(l),
    source: l.source,
    sourceHandle: outHandle(l.slot),
    target: l.target,
    targetHandle: inHandle(l.input),
    style: type ? { stroke: typeColor(type) } : undefined,
    data: { type },
    reconnectable: "target", // drag a link off its input to move or detach it
  };
}

export function graphToFlow(graph: Graph, defs: Defs): { nodes: SfNode[]; edges: SfEdge[] } {
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  const slots = new Map(graph.nodes.filter((n) => n.slots).map((n) => [n.id, n.slots as NodeSlots]));
  const view = { nodeType: (id: string) => types.get(id), links: graph.links };
  return {
    nodes: graph.nodes.map(toFlowNode),
    // a link out of a reroute has the colour of the reroute's source; out of a missing node, its saved slot's
    edges: graph.links.map((l) => toFlowEdge(l, defs, types.get(l.source),
      outputType(view, defs, l.source, l.slot) ?? savedType(slots.get(l.source), l.slot))),
  };
}

/** A missing node's saved output type (none for "*": nothing known). */
function savedType(slots: NodeSlots | undefined, slot: number): string | undefined {
  const type = slots?.outputs[slot]?.type;
  return type && type !== "*" ? type : undefined;
}

export function edgeToLink(e: SfEdge): GraphLink {
  return { source: e.source, slot: slotOf(e.sourceHandle), target: e.target, input: inputOf(e.targetHandle) };
}

export function flowToGraph(nodes: SfNode[], edges: SfEdge[], base?: Partial<Graph>): Graph {
  return {
    nodes: nodes.map((n): GraphNode => {
      const g: GraphNode = {
        id: n.id,
        type: n.data.type,
        pos: [n.position.x, n.position.y],
        values: n.data.values,
      };
      if (n.data.title) g.title = n.data.title;
      if (n.data.control) g.control = n.data.control;
      if (n.data.mode) g.mode = n.data.mode;
      if (n.data.color) g.color = n.data.color;
      if (n.data.pinned) g.pinned = true;
      if (n.data.collapsed) g.collapsed = true;
      if (n.data.slots) g.slots = n.data.slots;
      if (n.data.rawWidgets) g.rawWidgets = n.data.rawWidgets;
      if (n.data.size) g.size = [n.width ?? n.data.size[0], n.data.size[1]];
      return g;
    }),
    links: edges.map(edgeToLink),
    groups: base?.groups ?? [],
    viewport: base?.viewport,
    extra: base?.extra,
  };
}

/** Edges out of reroutes recoloured after the reroutes' sources changed. */
export function recolourReroutes(edges: SfEdge[], nodeType: (id: string) => string | undefined, defs: Defs): SfEdge[] {
  const view = { nodeType, links: edges.map(edgeToLink) };
  return edges.map((e) => {
    if (nodeType(e.source) !== REROUTE) return e;
    const type = outputType(view, defs, e.source, 0);
    if (type === (e.data as { type?: string } | undefined)?.type) return e;
    return { ...e, style: type ? { stroke: typeColor(type) } : undefined, data: { ...e.data, type } };
  });
}
