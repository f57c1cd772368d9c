/**
 * Connection rules — the same as the server's validator (engine/validation.py
 * `types_match` and `_check_link`), so a link the canvas accepts is one the
 * server accepts, and one it refuses comes with the same reason.
 */

import { downstreamTypes, NOTE, outputType, REROUTE, REROUTE_INPUT } from "./reroute";
import type { Defs, InputDef, NodeDef } from "./schema";

export const ANY_TYPE = "*";

/** Socket types match if equal, either is "*", or comma lists intersect. */
export function typesMatch(outType: string, inType: string): boolean {
  if (outType === inType || outType === ANY_TYPE || inType === ANY_TYPE) return true;
  if (inType === "COMBO" && (outType === "STRING" || outType === "COMBO")) return true;
  const outs = new Set(outType.split(","));
  return inType.split(",").some((t) => outs.has(t));
}

export type LinkRef = { source: string; slot: number; target: string; input: string };

export type ConnectionCheck =
  | { ok: true; replaces: LinkRef | null }
  | { ok: false; reason: string };

export type GraphView = {
  nodeType(id: string): string | undefined;
  /** The node's title on the canvas, where the user gave it one ("Positive Prompt"). */
  nodeTitle?(id: string): string | undefined;
  links: readonly LinkRef[];
};

/** A node as the canvas shows it: its title, else its type's display name. */
function nameOf(graph: GraphView, id: string, def: NodeDef): string {
  return graph.nodeTitle?.(id) || def.displayName;
}

function describeInput(name: string, input: InputDef): string {
  return `${name}.${input.name} (${input.type})`;
}

/** Would `to` be reachable from `from` following links downstream? */
export function reaches(links: readonly LinkRef[], from: string, to: string): boolean {
  const next = new Map<string, string[]>();
  for (const l of links) {
    const list = next.get(l.source);
    if (list) list.push(l.target);
    else next.set(l.source, [l.target]);
  }
  const seen = new Set([from]);
  const stack = [from];
  while (stack.length) {
    const id = stack.pop()!;
    if (id === to) return true;
    for (const n of next.get(id) ?? []) {
      if (!seen.has(n)) {
        seen.add(n);
        stack.push(n);
      }
    }
  }
  return false;
}

/**
 * Check a new link `source.slot → target.input`. One link per input: a valid
 * link to an input that already has one replaces it (`replaces`).
 */
export function checkConnection(graph: GraphView, defs: Defs, link: LinkRef): ConnectionCheck {
  const srcType = graph.nodeType(link.source);
  const dstType = graph.nodeType(link.target);
  if (srcType === undefined || dstType === undefined) return { ok: false, reason: "node not found" };
  if (srcType === NOTE || dstType === NOTE) return { ok: false, reason: "a note has no sockets" };
  if (srcType === REROUTE || dstType === REROUTE) return checkRerouteLink(graph, defs, link, srcType, dstType);
  const src = defs.get(srcType);
  const dst = defs.get(dstType);
  if (!src) return { ok: false, reason: `unknown node type ${srcType}` };
  if (!dst) return { ok: false, reason: `unknown node type ${dstType}` };
  if (link.source === link.target) return { ok: false, reason: "a node cannot be linked to itself" };
  const srcName = nameOf(graph, link.source, src);
  const dstName = nameOf(graph, link.target, dst);
  const output = src.outputs[link.slot];
  if (!output) return { ok: false, reason: `${srcName} has no output ${link.slot}` };
  const input = dst.inputs.find((i) => i.name === link.input);
  if (!input) return { ok: false, reason: `${dstName} has no input '${link.input}'` };
  if (!typesMatch(output.type, input.type)) {
    return {
      ok: false,
      reason: `type mismatch: ${describeInput(dstName, input)} cannot take ${srcName}'s ${output.type} output`,
    };
  }
  return checkCycle(graph, link);
}

/** A link from or into a reroute: the type it carries must suit every input it reaches. */
function checkRerouteLink(graph: GraphView, defs: Defs, link: LinkRef, srcType: string, dstType: string): ConnectionCheck {
  if (link.source === link.target) return { ok: false, reason: "a node cannot be linked to itself" };
  let outType: string;
  if (srcType === REROUTE) {
    if (link.slot !== 0) return { ok: false, reason: `a reroute has no output ${link.slot}` };
    outType = outputType(graph, defs, link.source, 0) ?? ANY_TYPE;
  } else {
    const src = defs.get(srcType);
    if (!src) return { ok: false, reason: `unknown node type ${srcType}` };
    const output = src.outputs[link.slot];
    if (!output) return { ok: false, reason: `${nameOf(graph, link.source, src)} has no output ${link.slot}` };
    outType = output.type;
  }
  let inTypes: string[];
  let what: string;
  if (dstType === REROUTE) {
    if (link.input !== REROUTE_INPUT) return { ok: false, reason: `a reroute has no input '${link.input}'` };
    inTypes = downstreamTypes(graph, defs, link.target);
    what = "the inputs this reroute feeds";
  } else {
    const dst = defs.get(dstType);
    if (!dst) return { ok: false, reason: `unknown node type ${dstType}` };
    const input = dst.inputs.find((i) => i.name === link.input);
    const dstName = nameOf(graph, link.target, dst);
    if (!input) return { ok: false, reason: `${dstName} has no input '${link.input}'` };
    inTypes = [input.type];
    what = describeInput(dstName, input);
  }
  const bad = inTypes.find((t) => !typesMatch(outType, t));
  if (bad !== undefined) {
    return { ok: false, reason: `type mismatch: ${what} (${bad}) cannot take an output of type ${outType}` };
  }
  return checkCycle(graph, link);
}

function checkCycle(graph: GraphView, link: LinkRef): ConnectionCheck {
  // A link into an input that already has one replaces it; the old link must
  // not count when looking for a cycle.
  const others = graph.links.filter((l) => !(l.target === link.target && l.input === link.input));
  if (reaches(others, link.target, link.source)) {
    return { ok: false, reason: "this link would make a cycle" };
  }
  const replaces = graph.links.find((l) => l.target === link.target && l.input === link.input) ?? null;
  return { ok: true, replaces };
}

/**
 * Node types (with the matching slot or input) that can connect to a dragged socket.
 * `choice`: only a list of choices takes it (a STRING into a combo such as a sampler name),
 * which is rarely what a dropped text is for: the palette lists such nodes last.
 */
export type Compatible = { type: string; slot?: number; input?: string; choice?: boolean };

/** Nodes with an input accepting `outType` (dragging from an output). */
export function nodesAcceptingType(defs: Defs, outType: string): Compatible[] {
  const out: Compatible[] = [];
  for (const def of defs.values()) {
    // Prefer a socket input over a widget one (e.g. a STRING output onto a text
    // widget only when there is no socket that takes it), and a widget of the type itself
    // over a list of choices (a STRING onto a text field rather than a sampler name).
    const sockets = def.inputs.filter((i) => !i.widget && typesMatch(outType, i.type));
    const widgets = outType === ANY_TYPE ? [] : def.inputs.filter((i) => i.widget && typesMatch(outType, i.type));
    const choice = (i: InputDef) => i.type === "COMBO" && outType !== "COMBO";
    const pick = sockets[0] ?? widgets.find((i) => !choice(i)) ?? widgets[0];
    if (pick) out.push({ type: def.type, input: pick.name, ...(choice(pick) ? { choice: true } : {}) });
  }
  return out;
}

/** Nodes with an output that an input of type `inType` accepts (dragging from an input). */
export function nodesProducingType(defs: Defs, inType: string): Compatible[] {
  const out: Compatible[] = [];
  for (const def of defs.values()) {
    const slot = def.outputs.findIndex((o) => typesMatch(o.type, inType));
    if (slot >= 0) out.push({ type: def.type, slot });
  }
  return out;
}

/** A stable colour per socket type (edges and handles). */
const TYPE_COLORS: Record<string, string> = {
  MODEL: "#b39ddb",
  CLIP: "#ffd54f",
  VAE: "#ef5350",
  CONDITIONING: "#ffa726",
  LATENT: "#f06292",
  IMAGE: "#64b5f6",
  MASK: "#81c784",
  INT: "#4db6ac",
  FLOAT: "#aed581",
  STRING: "#90a4ae",
  BOOLEAN: "#ce93d8",
  COMBO: "#90a4ae",
  "*": "#bdbdbd",
};

export function typeColor(type: string): string {
  const known = TYPE_COLORS[type] ?? TYPE_COLORS[type.split(",")[0]];
  if (known) return known;
  let h = 0;
  for (let i = 0; i < type.length; i++) h = (h * 31 + type.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360} 55% 62%)`;
}
