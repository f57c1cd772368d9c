/**
 * The canvas's graph model and its conversions:
 *
 * - API format (what runs): `{id: {class_type, inputs: {name: value | [src, slot]}, _meta: {title}}}`;
 *   a node may carry `mode: "muted" | "bypass"` (ComfyUI's Never and Bypass), which the
 *   server resolves when it validates: muted nodes are left out, bypassed ones pass an
 *   input of the matching type through
 * - our document (what Save writes, `workflows/*.json`):
 *   `{format: "steerflow.workflow", version: 1, prompt, layout: {nodes, groups, viewport}, extra}`;
 *   reroutes and notes are canvas-only (lib/reroute.ts): they are kept in the layout
 *   (`layout.reroutes`, `layout.notes`, `layout.nodes[id].via`), never in the prompt
 *
 * The graph is plain data with no React Flow types, so it is testable alone.
 */

import { CUSTOM_COMBO, isCustomComboExtra } from "./customcombo";
import { type NodeSlots, parseSlots } from "./missingnode";
import { isVirtual, NOTE, NOTE_SIZE, REROUTE, REROUTE_INPUT, sourceResolver } from "./reroute";
import { type ControlMode, CONTROL_MODES, type Defs, defaultValues, isActive } from "./schema";
import type { LinkRef } from "./types";

export const DOCUMENT_FORMAT = "steerflow.workflow";
export const DOCUMENT_VERSION = 1;

export type Vec2 = [number, number];

export type GraphNode = {
  id: string;
  type: string;
  pos: Vec2;
  size?: Vec2;
  title?: string;
  /** Constant inputs (widgets). Linked inputs are in `links`. */
  values: Record<string, unknown>;
  /** control_after_generate mode per widget (e.g. `{seed: "randomize"}`). */
  control?: Record<string, ControlMode>;
  /** Left out of the run (`muted`) or passed through (`bypass`); absent: runs. */
  mode?: NodeMode;
  /** Canvas-only looks, saved in the layout: header colour, pinned in place, collapsed to its title. */
  color?: string;
  pinned?: boolean;
  collapsed?: boolean;
  /** A node whose type this server lacks: its slots as the saved document had them (lib/missingnode.ts). */
  slots?: NodeSlots;
  /** A node whose type this server lacked: its ComfyUI widget values, kept raw until the server fills them in. */
  rawWidgets?: RawWidgets;
};

/** ComfyUI's `widgets_values` (and `widgets_values_named`) of a node of a type not installed (engine/comfy_raw.py). */
export type RawWidgets = { widgets_values?: unknown; widgets_values_named?: unknown };

export type NodeMode = "muted" | "bypass";

export type GraphLink = LinkRef;

export type Viewport = { x: number; y: number; zoom: number };

export type Graph = {
  nodes: GraphNode[];
  links: GraphLink[];
  groups: unknown[];
  viewport?: Viewport;
  extra?: Record<string, unknown>;
};

export type ApiNode = { class_type: string; inputs: Record<string, unknown>; _meta?: { title?: string }; mode?: NodeMode };
export type ApiPrompt = Record<string, ApiNode>;

export type LayoutNode = {
  pos: Vec2; size?: Vec2; title?: string; control?: Record<string, ControlMode>;
  color?: string; pinned?: boolean; collapsed?: boolean;
  /** Inputs fed through a reroute: input name → the reroute's id (the prompt links the real source). */
  via?: Record<string, string>;
  /** A node of a type the server lacked: its inputs' and outputs' names and types (lib/missingnode.ts). */
  slots?: NodeSlots;
  /** A node of a type the server lacked: ComfyUI's widget values, raw (engine/comfy_raw.py). */
  widgets_values?: unknown;
  widgets_values_named?: unknown;
};

/** A reroute in the layout: where it is and what feeds it (a node's output or another reroute). */
export type RerouteLayout = { pos: Vec2; input?: [string, number] };
/** A note in the layout (`markdown`: ComfyUI's MarkdownNote, so a ComfyUI file's note keeps its kind). */
export type NoteLayout = { pos: Vec2; size?: Vec2; text: string; title?: string; color?: string; markdown?: boolean };

export type WorkflowDocument = {
  format: typeof DOCUMENT_FORMAT;
  version: number;
  prompt: ApiPrompt;
  layout: {
    nodes: Record<string, LayoutNode>; groups: unknown[]; viewport?: Viewport;
    reroutes?: Record<string, RerouteLayout>; notes?: Record<string, NoteLayout>;
  };
  extra: Record<string, unknown>;
};

export class WorkflowFormatError extends Error {}

export function emptyGraph(): Graph {
  return { nodes: [], links: [], groups: [] };
}

/** A link is `[source_id, output_index]` with an integer index. */
export function isLink(value: unknown): value is [string | number, number] {
  return (
    Array.isArray(value) &&
    value.length === 2 &&
    (typeof value[0] === "string" || typeof value[0] === "number") &&
    typeof value[1] === "number" &&
    Number.isInteger(value[1])
  );
}

export function linkId(l: LinkRef): string {
  return `${l.source}:${l.slot}->${l.target}:${l.input}`;
}

/** The next free node id: one past the largest numeric id (ComfyUI numbers nodes). */
export function nextNodeId(ids: Iterable<string>): string {
  let max = 0;
  for (const id of ids) {
    const n = Number(id);
    if (Number.isInteger(n) && n > max) max = n;
  }
  return String(max + 1);
}

/** A new node of `type` at `pos`, with its widgets at their defaults. */
export function createNode(defs: Defs, type: string, id: string, pos: Vec2): GraphNode {
  if (type === NOTE) return { id, type, pos, size: [...NOTE_SIZE], values: { text: "" } };
  const def = defs.get(type);
  const node: GraphNode = { id, type, pos, values: def ? defaultValues(def) : {} };
  if (def) {
    const control: Record<string, ControlMode> = {};
    for (const input of def.inputs) {
      if (input.widget && input.options.control_after_generate) control[input.name] = "randomize";
    }
    if (Object.keys(control).length) node.control = control;
  }
  return node;
}

// --- API format -----------------------------------------------------------------------

/**
 * The executable API-format prompt of a graph. Reroutes and notes are left out; an
 * input fed through reroutes links their real source (none if a reroute is unfed).
 */
export function graphToPrompt(graph: Graph, defs: Defs): ApiPrompt {
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  const resolve = sourceResolver(graph.links, (id) => types.get(id));
  const linksByTarget = new Map<string, GraphLink[]>();
  // Inputs linked from an unfed reroute: left empty (as ComfyUI does), not given the widget's value.
  const unfed = new Set<string>();
  for (const raw of graph.links) {
    const src = resolve(raw.source, raw.slot);
    if (!src) {
      unfed.add(`${raw.target}|${raw.input}`);
      continue;
    }
    const l = { ...raw, ...src };
    const list = linksByTarget.get(l.target);
    if (list) list.push(l);
    else linksByTarget.set(l.target, [l]);
  }
  const prompt: ApiPrompt = {};
  for (const node of graph.nodes) {
    if (isVirtual(node.type)) continue;
    const def = defs.get(node.type);
    const links = linksByTarget.get(node.id) ?? [];
    const inputs: Record<string, unknown> = {};
    if (def) {
      for (const input of def.inputs) {
        if (!isActive(input, node.values, def.inputs)) continue; // another DynamicCombo option's
        const link = links.find((l) => l.input === input.name);
        if (link) inputs[input.name] = [link.source, link.slot];
        else if (input.widget && node.values[input.name] !== undefined && !unfed.has(`${node.id}|${input.name}`)) {
          inputs[input.name] = node.values[input.name];
        }
      }
      if (node.type === CUSTOM_COMBO) {
        // the option boxes and hidden index ComfyUI's front end adds (not in the schema)
        for (const [name, value] of Object.entries(node.values)) {
          if (isCustomComboExtra(name) && value !== undefined) inputs[name] = value;
        }
      }
    } else {
      // Unknown type: keep what we have so the document round-trips.
      Object.assign(inputs, node.values);
      for (const l of links) inputs[l.input] = [l.source, l.slot];
    }
    const title = node.title ?? def?.displayName ?? node.type;
    prompt[node.id] = { class_type: node.type, inputs, _meta: { title } };
    if (node.mode) prompt[node.id].mode = node.mode;
  }
  return prompt;
}

/** Columns by topological generation, as the engine's `auto_layout`. */
export function autoLayout(ids: string[], links: readonly LinkRef[], dx = 340, dy = 260): Map<string, Vec2> {
  const preds = new Map<string, Set<string>>(ids.map((id) => [id, new Set()]));
  for (const l of links) if (preds.has(l.target) && preds.has(l.source)) preds.get(l.target)!.add(l.source);
  const depth = new Map<string, number>();
  const visiting = new Set<string>();
  const depthOf = (id: string): number => {
    const known = depth.get(id);
    if (known !== undefined) return known;
    if (visiting.has(id)) return 0; // a cycle: give up on depth
    visiting.add(id);
    let d = 0;
    for (const p of preds.get(id) ?? []) d = Math.max(d, depthOf(p) + 1);
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  const rows = new Map<number, number>();
  const out = new Map<string, Vec2>();
  for (const id of ids) {
    const col = depthOf(id);
    const row = rows.get(col) ?? 0;
    rows.set(col, row + 1);
    out.set(id, [col * dx, row * dy]);
  }
  return out;
}

/** Our mode names, and ComfyUI's numbers (2 never, 4 bypass) as the server reads them. */
export function nodeMode(value: unknown): NodeMode | undefined {
  if (value === "muted" || value === 2) return "muted";
  if (value === "bypass" || value === 4) return "bypass";
  return undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function vec2(v: unknown): Vec2 | undefined {
  if (Array.isArray(v) && v.length >= 2 && v.every((x) => typeof x === "number")) return [v[0], v[1]];
  if (isObject(v) && typeof v[0] === "number" && typeof v[1] === "number") return [v[0], v[1]];
  return undefined;
}

/** An API-format prompt (plus optional layout) → graph. Missing widget values get defaults. */
export function promptToGraph(prompt: Record<string, unknown>, defs: Defs,
  layout?: Record<string, unknown>): { graph: Graph; warnings: string[] } {
  const warnings: string[] = [];
  const nodes: GraphNode[] = [];
  const links: GraphLink[] = [];
  for (const [id, raw] of Object.entries(prompt)) {
    if (!isObject(raw) || typeof raw.class_type !== "string") {
      warnings.push(`node ${id} is not an API-format node; skipped`);
      continue;
    }
    const type = raw.class_type;
    const def = defs.get(type);
    if (!def) warnings.push(`node ${id}: unknown node type ${type}`);
    const values: Record<string, unknown> = def ? defaultValues(def) : {};
    const inputs = isObject(raw.inputs) ? raw.inputs : {};
    for (const [name, value] of Object.entries(inputs)) {
      const input = def?.inputs.find((i) => i.name === name);
      // No widget takes a list, so a `[id, index]` pair is a link (as on the server).
      if (isLink(value)) {
        links.push({ source: String(value[0]), slot: value[1], target: id, input: name });
      } else if (!def || input || (type === CUSTOM_COMBO && isCustomComboExtra(name))) {
        values[name] = value;
      } else {
        warnings.push(`node ${id} (${type}): unknown input '${name}' dropped`);
      }
    }
    const meta = isObject(raw._meta) ? raw._meta : {};
    const lay = layout && isObject(layout[id]) ? (layout[id] as Record<string, unknown>) : {};
    const title = typeof lay.title === "string" ? lay.title : typeof meta.title === "string" ? meta.title : undefined;
    const node: GraphNode = { id, type, pos: vec2(lay.pos) ?? [0, 0], values };
    const size = vec2(lay.size);
    if (size) node.size = size;
    if (title && title !== (def?.displayName ?? type)) node.title = title;
    const mode = nodeMode(raw.mode);
    if (mode) node.mode = mode;
    if (typeof lay.color === "string" && /^#[0-9a-fA-F]{3,8}$/.test(lay.color)) node.color = lay.color;
    if (lay.pinned === true) node.pinned = true;
    if (lay.collapsed === true) node.collapsed = true;
    const slots = def ? undefined : parseSlots(lay.slots);
    if (slots) node.slots = slots;
    // kept also once the type is known: the server fills them in when the document is
    // opened (lib/load.ts), and until then a save must not lose them
    const rawWidgets = parseRawWidgets(lay);
    if (rawWidgets) node.rawWidgets = rawWidgets;
    const control: Record<string, ControlMode> = {};
    for (const input of def?.inputs ?? []) {
      const saved = isObject(lay.control) ? lay.control[input.name] : undefined;
      if (!input.widget) continue;
      // a number without the flag keeps a saved control (a primitive given one when first linked)
      if (!input.options.control_after_generate
        && !((input.type === "INT" || input.type === "FLOAT") && CONTROL_MODES.includes(saved as ControlMode))) continue;
      control[input.name] = CONTROL_MODES.includes(saved as ControlMode) ? (saved as ControlMode) : "fixed";
    }
    if (Object.keys(control).length) node.control = control;
    nodes.push(node);
  }
  const ids = new Set(nodes.map((n) => n.id));
  const kept = links.filter((l) => {
    if (ids.has(l.source)) return true;
    warnings.push(`node ${l.target}: input '${l.input}' links to missing node ${l.source}; dropped`);
    return false;
  });
  const missing = nodes.filter((n) => !(layout && isObject(layout[n.id]) && vec2((layout[n.id] as Record<string, unknown>).pos)));
  if (missing.length) {
    const auto = autoLayout(nodes.map((n) => n.id), kept);
    for (const n of missing) n.pos = auto.get(n.id) ?? [0, 0];
  }
  return { graph: { nodes, links: kept, groups: [] }, warnings };
}

// --- document -------------------------------------------------------------------------

export function graphToDocument(graph: Graph, defs: Defs): WorkflowDocument {
  const nodes: Record<string, LayoutNode> = {};
  const reroutes: Record<string, RerouteLayout> = {};
  const notes: Record<string, NoteLayout> = {};
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  const round = (v: Vec2): Vec2 => [Math.round(v[0]), Math.round(v[1])];
  for (const n of graph.nodes) {
    if (n.type === REROUTE) {
      const into = graph.links.find((l) => l.target === n.id);
      reroutes[n.id] = into ? { pos: round(n.pos), input: [into.source, into.slot] } : { pos: round(n.pos) };
      continue;
    }
    if (n.type === NOTE) {
      const note: NoteLayout = { pos: round(n.pos), text: typeof n.values.text === "string" ? n.values.text : "" };
      if (n.size) note.size = round(n.size);
      if (n.title) note.title = n.title;
      if (n.color) note.color = n.color;
      if (n.values.markdown === true) note.markdown = true;
      notes[n.id] = note;
      continue;
    }
    const entry: LayoutNode = { pos: [Math.round(n.pos[0]), Math.round(n.pos[1])] };
    if (n.size) entry.size = [Math.round(n.size[0]), Math.round(n.size[1])];
    if (n.title) entry.title = n.title;
    if (n.control && Object.keys(n.control).length) entry.control = { ...n.control };
    if (n.color) entry.color = n.color;
    if (n.pinned) entry.pinned = true;
    if (n.collapsed) entry.collapsed = true;
    if (n.slots && !defs.get(n.type)) entry.slots = { inputs: [...n.slots.inputs], outputs: [...n.slots.outputs] };
    if (n.rawWidgets) Object.assign(entry, structuredClone(n.rawWidgets));
    const via: Record<string, string> = {};
    for (const l of graph.links) if (l.target === n.id && types.get(l.source) === REROUTE) via[l.input] = l.source;
    if (Object.keys(via).length) entry.via = via;
    nodes[n.id] = entry;
  }
  const layout: WorkflowDocument["layout"] = { nodes, groups: graph.groups ?? [] };
  if (Object.keys(reroutes).length) layout.reroutes = reroutes;
  if (Object.keys(notes).length) layout.notes = notes;
  if (graph.viewport) layout.viewport = graph.viewport;
  return {
    format: DOCUMENT_FORMAT,
    version: DOCUMENT_VERSION,
    prompt: graphToPrompt(graph, defs),
    layout,
    extra: graph.extra ?? {},
  };
}

export function isDocument(obj: unknown): obj is WorkflowDocument {
  return isObject(obj) && obj.format === DOCUMENT_FORMAT;
}

export function documentToGraph(doc: unknown, defs: Defs): { graph: Graph; warnings: string[] } {
  if (!isDocument(doc)) throw new WorkflowFormatError("not a Steerflow workflow document");
  const version = (doc as { version?: unknown }).version;
  if (typeof version !== "number" || version < 1) throw new WorkflowFormatError(`document has no valid version: ${String(version)}`);
  if (version > DOCUMENT_VERSION) {
    throw new WorkflowFormatError(`document version ${version} is newer than this canvas (${DOCUMENT_VERSION})`);
  }
  if (!isObject(doc.prompt)) throw new WorkflowFormatError("document has no 'prompt' object");
  const layout: Record<string, unknown> = isObject(doc.layout) ? doc.layout : {};
  const result = promptToGraph(doc.prompt, defs, isObject(layout.nodes) ? layout.nodes : undefined);
  result.graph.groups = Array.isArray(layout.groups) ? layout.groups : [];
  const vp = layout.viewport as Viewport | undefined;
  if (vp && typeof vp.x === "number" && typeof vp.y === "number" && typeof vp.zoom === "number") {
    result.graph.viewport = { x: vp.x, y: vp.y, zoom: vp.zoom };
  }
  result.graph.extra = isObject(doc.extra) ? doc.extra : {};
  addCanvasOnly(result.graph, layout, result.warnings);
  return result;
}

/** Put a document's reroutes and notes (its layout part) back into the graph read from its prompt. */
function addCanvasOnly(graph: Graph, layout: Record<string, unknown>, warnings: string[]): void {
  const taken = new Set(graph.nodes.map((n) => n.id));
  const notes = isObject(layout.notes) ? layout.notes : {};
  for (const [id, raw] of Object.entries(notes)) {
    if (!isObject(raw) || taken.has(id)) {
      warnings.push(`note ${id} is not a valid note (or its id is taken); dropped`);
      continue;
    }
    taken.add(id);
    const note: GraphNode = { id, type: NOTE, pos: vec2(raw.pos) ?? [0, 0], values: { text: typeof raw.text === "string" ? raw.text : "" } };
    const size = vec2(raw.size);
    note.size = size ?? [...NOTE_SIZE];
    if (typeof raw.title === "string" && raw.title) note.title = raw.title;
    if (typeof raw.color === "string" && /^#[0-9a-fA-F]{3,8}$/.test(raw.color)) note.color = raw.color;
    if (raw.markdown === true) note.values.markdown = true;
    graph.nodes.push(note);
  }
  const reroutes = isObject(layout.reroutes) ? layout.reroutes : {};
  const added: string[] = [];
  for (const [id, raw] of Object.entries(reroutes)) {
    if (!isObject(raw) || taken.has(id)) {
      warnings.push(`reroute ${id} is not a valid reroute (or its id is taken); dropped`);
      continue;
    }
    taken.add(id);
    added.push(id);
    graph.nodes.push({ id, type: REROUTE, pos: vec2(raw.pos) ?? [0, 0], values: {} });
  }
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  for (const id of added) {
    const input = (reroutes[id] as Record<string, unknown>).input;
    if (isLink(input) && types.has(String(input[0])) && types.get(String(input[0])) !== NOTE) {
      graph.links.push({ source: String(input[0]), slot: input[1], target: id, input: REROUTE_INPUT });
    }
  }
  // Inputs fed through a reroute: link them from it when it leads to the source the prompt names.
  const nodesLayout = isObject(layout.nodes) ? layout.nodes : {};
  const resolve = sourceResolver(graph.links, (id) => types.get(id));
  for (const [target, raw] of Object.entries(nodesLayout)) {
    const via = isObject(raw) && isObject(raw.via) ? raw.via : {};
    for (const [input, rid] of Object.entries(via)) {
      if (typeof rid !== "string" || types.get(rid) !== REROUTE || !types.has(target) || isVirtual(types.get(target))) continue;
      const i = graph.links.findIndex((l) => l.target === target && l.input === input);
      const current = i >= 0 ? graph.links[i] : undefined;
      const src = resolve(rid, 0);
      const agrees = current ? !!src && src.source === current.source && src.slot === current.slot : !src;
      if (!agrees) {
        warnings.push(`node ${target}: input '${input}' no longer comes through reroute ${rid}; the prompt's link kept`);
        continue;
      }
      const link = { source: rid, slot: 0, target, input };
      if (current) graph.links[i] = link;
      else graph.links.push(link);
    }
  }
}

/** Remove nodes (and the links touching them). */
export function removeNodes(graph: Graph, ids: Set<string>): Graph {
  return {
    ...graph,
    nodes: graph.nodes.filter((n) => !ids.has(n.id)),
    links: graph.links.filter((l) => !ids.has(l.source) && !ids.has(l.target)),
  };
}

/**
 * Copy `nodes` (and the links among them) into `graph` with fresh ids, shifted
 * by `offset`. Returns the new graph and the ids of the pasted nodes.
 */
export function pasteNodes(graph: Graph, clip: { nodes: GraphNode[]; links: GraphLink[] }, offset: Vec2): {
  graph: Graph; ids: string[];
} {
  const existing = graph.nodes.map((n) => n.id);
  const idMap = new Map<string, string>();
  const pasted: GraphNode[] = [];
  for (const n of clip.nodes) {
    const id = nextNodeId([...existing, ...idMap.values()]);
    idMap.set(n.id, id);
    pasted.push({
      ...structuredClone(n),
      id,
      pos: [n.pos[0] + offset[0], n.pos[1] + offset[1]],
    });
  }
  const links = clip.links
    .filter((l) => idMap.has(l.source) && idMap.has(l.target))
    .map((l) => ({ ...l, source: idMap.get(l.source)!, target: idMap.get(l.target)! }));
  return {
    graph: { ...graph, nodes: [...graph.nodes, ...pasted], links: [...graph.links, ...links] },
    ids: pasted.map((n) => n.id),
  };
}

/** The raw ComfyUI widget values a layout entry keeps for a node of a type not installed, if any. */
export function parseRawWidgets(lay: Record<string, unknown>): RawWidgets | undefined {
  const raw: RawWidgets = {};
  if (Array.isArray(lay.widgets_values)) raw.widgets_values = structuredClone(lay.widgets_values);
  if (isObject(lay.widgets_values_named)) raw.widgets_values_named = structuredClone(lay.widgets_values_named);
  return Object.keys(raw).length ? raw : undefined;
}

/** Whether a document keeps raw widget values for a node whose type `known` now has (to be filled in by the server). */
export function hasRestorableRaw(doc: WorkflowDocument, known: (type: string) => boolean): boolean {
  const nodes = isObject(doc.layout) && isObject(doc.layout.nodes) ? doc.layout.nodes : {};
  return Object.entries(nodes).some(([id, lay]) => isObject(lay)
    && ("widgets_values" in lay || "widgets_values_named" in lay)
    && known(String((doc.prompt as Record<string, { class_type?: unknown }>)[id]?.class_type ?? "")));
}
