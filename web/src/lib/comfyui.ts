/**
 * Import ComfyUI's UI-format workflows (what its "Save" writes and its PNGs
 * carry in the `workflow` chunk):
 *
 *   {nodes: [{id, type, pos, size, title?, mode, widgets_values, inputs: [{name, type, link, widget?}],
 *             outputs: [{name, type, links}]}],
 *    links: [[id, from_node, from_slot, to_node, to_slot, type]] | [{id, origin_id, ...}],
 *    groups: [{title, bounding: [x, y, w, h], color}], extra: {ds: {scale, offset}}}
 *
 * `widgets_values` are mapped onto the schema's widget inputs in order,
 * skipping the extra "control_after_generate" value ComfyUI stores after a
 * seed. Front-end-only nodes are resolved: Reroute links are followed to their
 * source, a PrimitiveNode's value is written into the widgets it feeds, and
 * notes are dropped.
 */

import type { Graph, GraphLink, GraphNode, Vec2 } from "./graph";
import { type ControlMode, CONTROL_MODES, type Defs, defaultValues, widgetInputs } from "./schema";

type UiLink = { id: number | string; from: string; fromSlot: number; to: string; toSlot: number; type?: string };
type UiInput = { name?: string; type?: string; link?: number | string | null; widget?: { name?: string } };
type UiNode = {
  id: number | string;
  type: string;
  pos?: unknown;
  size?: unknown;
  title?: string;
  mode?: number;
  widgets_values?: unknown;
  inputs?: UiInput[];
  outputs?: { name?: string; type?: string; links?: (number | string)[] | null }[];
};

const NOTE_TYPES = new Set(["Note", "MarkdownNote"]);
const REROUTE = "Reroute";
const PRIMITIVE = "PrimitiveNode";

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function vec2(v: unknown): Vec2 | undefined {
  if (Array.isArray(v) && v.length >= 2 && typeof v[0] === "number" && typeof v[1] === "number") return [v[0], v[1]];
  if (isObject(v) && typeof v[0] === "number" && typeof v[1] === "number") return [v[0], v[1]];
  return undefined;
}

/** Is this ComfyUI's UI (litegraph) format rather than an API prompt or our document? */
export function isComfyUiWorkflow(obj: unknown): boolean {
  return isObject(obj) && Array.isArray(obj.nodes) && (Array.isArray(obj.links) || isObject(obj.links)) &&
    obj.format === undefined;
}

function parseLinks(raw: unknown): Map<string, UiLink> {
  const links = new Map<string, UiLink>();
  const list = Array.isArray(raw) ? raw : isObject(raw) ? Object.values(raw) : [];
  for (const l of list) {
    if (Array.isArray(l) && l.length >= 5) {
      links.set(String(l[0]), {
        id: l[0] as number, from: String(l[1]), fromSlot: Number(l[2]), to: String(l[3]), toSlot: Number(l[4]),
        type: typeof l[5] === "string" ? l[5] : undefined,
      });
    } else if (isObject(l) && l.id !== undefined) {
      links.set(String(l.id), {
        id: l.id as number, from: String(l.origin_id), fromSlot: Number(l.origin_slot),
        to: String(l.target_id), toSlot: Number(l.target_slot), type: typeof l.type === "string" ? l.type : undefined,
      });
    }
  }
  return links;
}

function isControlMode(v: unknown): v is ControlMode {
  return typeof v === "string" && (CONTROL_MODES as string[]).includes(v);
}

export function importComfyUi(obj: unknown, defs: Defs): { graph: Graph; warnings: string[] } {
  if (!isComfyUiWorkflow(obj)) throw new Error("not a ComfyUI UI-format workflow");
  const root = obj as Record<string, unknown>;
  const warnings: string[] = [];
  const uiNodes = new Map<string, UiNode>();
  for (const n of root.nodes as unknown[]) {
    if (isObject(n) && (typeof n.id === "number" || typeof n.id === "string") && typeof n.type === "string") {
      uiNodes.set(String(n.id), n as unknown as UiNode);
    }
  }
  const uiLinks = parseLinks(root.links);

  // Follow Reroutes upstream to the real source of a link.
  const resolveSource = (link: UiLink): { node: string; slot: number } | null => {
    let current: UiLink | undefined = link;
    for (let hops = 0; current && hops < 1000; hops++) {
      const src = uiNodes.get(current.from);
      if (!src) return null;
      if (src.type !== REROUTE) return { node: current.from, slot: current.fromSlot };
      const upstream = src.inputs?.[0]?.link;
      current = upstream == null ? undefined : uiLinks.get(String(upstream));
    }
    return null;
  };

  const nodes: GraphNode[] = [];
  const byId = new Map<string, GraphNode>();
  const skippedTypes = new Set<string>();
  for (const [id, n] of uiNodes) {
    if (NOTE_TYPES.has(n.type) || n.type === REROUTE || n.type === PRIMITIVE) continue;
    const def = defs.get(n.type);
    const values: Record<string, unknown> = def ? defaultValues(def) : {};
    const control: Record<string, ControlMode> = {};
    if (!def) {
      skippedTypes.add(n.type);
    } else if (Array.isArray(n.widgets_values)) {
      const wv = n.widgets_values;
      let k = 0;
      for (const input of widgetInputs(def)) {
        if (k >= wv.length) break;
        values[input.name] = wv[k++];
        if (input.options.control_after_generate) {
          control[input.name] = "fixed";
          if (k < wv.length && isControlMode(wv[k])) control[input.name] = wv[k++] as ControlMode;
        }
      }
    } else if (isObject(n.widgets_values)) {
      for (const input of widgetInputs(def)) {
        if (input.name in n.widgets_values) values[input.name] = n.widgets_values[input.name];
      }
    }
    if (def) {
      for (const input of widgetInputs(def)) {
        if (input.options.control_after_generate && !control[input.name]) control[input.name] = "fixed";
      }
    }
    if (n.mode === 2 || n.mode === 4) {
      warnings.push(`node ${id} (${n.type}) was ${n.mode === 2 ? "muted" : "bypassed"} in ComfyUI; imported as active`);
    }
    const node: GraphNode = { id, type: n.type, pos: vec2(n.pos) ?? [0, 0], values };
    const size = vec2(n.size);
    if (size) node.size = size;
    if (typeof n.title === "string" && n.title && n.title !== (def?.displayName ?? n.type)) node.title = n.title;
    if (Object.keys(control).length) node.control = control;
    nodes.push(node);
    byId.set(id, node);
  }
  for (const t of skippedTypes) warnings.push(`node type ${t} is not available on this server`);

  const links: GraphLink[] = [];
  for (const link of uiLinks.values()) {
    const target = byId.get(link.to);
    if (!target) continue; // into a Reroute, a note or a dropped node
    const uiTarget = uiNodes.get(link.to)!;
    const slot = uiTarget.inputs?.[link.toSlot];
    const inputName = slot?.widget?.name ?? slot?.name;
    if (!inputName) {
      warnings.push(`link ${link.id}: node ${link.to} has no input ${link.toSlot}; dropped`);
      continue;
    }
    const src = resolveSource(link);
    if (!src) {
      warnings.push(`link ${link.id} into ${link.to}.${inputName} has no source; dropped`);
      continue;
    }
    const srcNode = uiNodes.get(src.node)!;
    if (srcNode.type === PRIMITIVE) {
      const wv = srcNode.widgets_values;
      if (Array.isArray(wv) && wv.length) target.values[inputName] = wv[0];
      continue;
    }
    if (!byId.has(src.node)) continue;
    links.push({ source: src.node, slot: src.slot, target: link.to, input: inputName });
  }

  const groups = Array.isArray(root.groups)
    ? root.groups.filter(isObject).map((g) => ({ title: g.title ?? "", bounding: g.bounding, color: g.color }))
    : [];
  const graph: Graph = { nodes, links, groups };
  const ds = isObject(root.extra) && isObject(root.extra.ds) ? root.extra.ds : undefined;
  const offset = ds ? vec2(ds.offset) : undefined;
  if (ds && offset && typeof ds.scale === "number" && ds.scale > 0) {
    graph.viewport = { x: offset[0] * ds.scale, y: offset[1] * ds.scale, zoom: ds.scale };
  }
  return { graph, warnings };
}
