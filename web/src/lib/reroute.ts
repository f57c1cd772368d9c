/**
 * Canvas-only nodes: reroutes and notes. They live in the canvas's graph like any
 * node, but never reach the executor: the API prompt links each input to the real
 * source behind its reroutes, and our document keeps them in its layout part
 * (`layout.reroutes`, `layout.notes`, and `layout.nodes[id].via` for an input fed
 * through a reroute). A reroute has one input (`input`) and one output (slot 0);
 * the type it carries is its source's.
 */

import type { Defs, NodeDef } from "./schema";
import type { GraphView, LinkRef } from "./types";

export const REROUTE = "Reroute";
export const NOTE = "Note";
export const REROUTE_INPUT = "input";
export const ANY = "*";
/** A new note's size; notes are resizable. */
export const NOTE_SIZE: [number, number] = [280, 140];

/**
 * The canvas-only nodes as the palette lists them (as ComfyUI's search does): found by
 * name, and a reroute fits a link of any type dropped on the canvas.
 */
export const VIRTUAL_DEFS: readonly NodeDef[] = [
  {
    type: REROUTE, displayName: "Reroute", category: "utils", outputNode: false, deprecated: false,
    description: "A dot that passes a link through, to route long links tidily; it carries its source's type and never runs.",
    inputs: [], outputs: [],
  },
  {
    type: NOTE, displayName: "Note", category: "utils", outputNode: false, deprecated: false,
    description: "A text note on the canvas, kept in the workflow's layout; it never runs.",
    inputs: [], outputs: [],
  },
];

/** True for node types the canvas draws but the executor never sees. */
export function isVirtual(type: string | undefined): boolean {
  return type === REROUTE || type === NOTE;
}

export type Source = { source: string; slot: number };

/**
 * A function giving the real source of a link that leaves `source.slot`, followed
 * upstream through reroutes; null when a reroute on the way has no input (or the
 * reroutes loop).
 */
export function sourceResolver(links: readonly LinkRef[], typeOf: (id: string) => string | undefined) {
  const into = new Map<string, LinkRef>();
  for (const l of links) if (typeOf(l.target) === REROUTE) into.set(l.target, l);
  return (source: string, slot: number): Source | null => {
    let cur: Source = { source, slot };
    const seen = new Set<string>();
    while (typeOf(cur.source) === REROUTE) {
      if (seen.has(cur.source)) return null;
      seen.add(cur.source);
      const up = into.get(cur.source);
      if (!up) return null;
      cur = { source: up.source, slot: up.slot };
    }
    return cur;
  };
}

/** The type a reroute carries: its real source's output type, or `*` while it has none. */
export function rerouteType(graph: GraphView, defs: Defs, id: string): string {
  const src = sourceResolver(graph.links, graph.nodeType)(id, 0);
  if (!src) return ANY;
  const type = graph.nodeType(src.source);
  return (type && defs.get(type)?.outputs[src.slot]?.type) ?? ANY;
}

/** The type an output carries, looking through a reroute to its source. */
export function outputType(graph: GraphView, defs: Defs, source: string, slot: number): string | undefined {
  const type = graph.nodeType(source);
  if (type === REROUTE) return rerouteType(graph, defs, source);
  return type ? defs.get(type)?.outputs[slot]?.type : undefined;
}

/** The types of the real inputs a reroute feeds, followed downstream through reroutes. */
export function downstreamTypes(graph: GraphView, defs: Defs, id: string): string[] {
  const types: string[] = [];
  const seen = new Set([id]);
  const stack = [id];
  while (stack.length) {
    const cur = stack.pop()!;
    for (const l of graph.links) {
      if (l.source !== cur) continue;
      const t = graph.nodeType(l.target);
      if (t === REROUTE) {
        if (!seen.has(l.target)) {
          seen.add(l.target);
          stack.push(l.target);
        }
      } else {
        const input = t ? defs.get(t)?.inputs.find((i) => i.name === l.input) : undefined;
        if (input) types.push(input.type);
      }
    }
  }
  return types;
}

/**
 * The links after a reroute `id` is put on `link`: source → reroute → target.
 * The other links are kept as they are.
 */
export function splitLink(links: readonly LinkRef[], link: LinkRef, id: string): LinkRef[] {
  const same = (l: LinkRef) => l.source === link.source && l.slot === link.slot && l.target === link.target && l.input === link.input;
  return [
    ...links.filter((l) => !same(l)),
    { source: link.source, slot: link.slot, target: id, input: REROUTE_INPUT },
    { source: id, slot: 0, target: link.target, input: link.input },
  ];
}
