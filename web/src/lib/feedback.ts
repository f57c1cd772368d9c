/**
 * FABRIC feedback from the gallery: Like / Dislike on an image adds its annotated name
 * ("sub/name.png [output]", the names Load Image and Load Image Batch read) as a line of
 * the `images` widget of the Load Image Batch linked into the FABRIC Feedback node's
 * `liked` / `disliked` input, creating and linking that node when none is linked.
 * Clicking again removes the line; liking a disliked image moves it (and vice versa).
 *
 * Which FABRIC node: the selected one (the first selected, in graph order), else the
 * first in the graph. Everything here is pure: the editor applies the returned ops as
 * ordinary graph edits (undoable, autosaved).
 */

import { createNode, type Graph, type GraphLink, type GraphNode, nextNodeId, type Vec2 } from "./graph";
import type { ImageRef } from "./runstore";
import type { Defs } from "./schema";

export const FABRIC_TYPE = "FABRICFeedback";
export const BATCH_TYPE = "LoadImageBatch";
export const BATCH_INPUT = "images";
export type FeedbackKind = "liked" | "disliked";
export const FEEDBACK_KINDS: readonly FeedbackKind[] = ["liked", "disliked"];
/** Where a created Load Image Batch goes, relative to the FABRIC node. */
const NEW_BATCH_OFFSET: Record<FeedbackKind, Vec2> = { liked: [-380, 0], disliked: [-380, 320] };

/** ComfyUI's annotated name of a served image: "sub/name.png [output]". */
export function annotatedName(img: ImageRef): string {
  const sub = (img.subfolder ?? "").replace(/\\/g, "/").replace(/^\/+|\/+$/g, "");
  return `${sub ? `${sub}/` : ""}${img.filename} [${img.type || "output"}]`;
}

const ANNOTATION = /^(.*?)\s*\[(input|output|temp)\]\s*$/;

/** Does `name` end in " [input]", " [output]" or " [temp]"? */
export function isAnnotated(name: string): boolean {
  return ANNOTATION.test(name);
}

/** The inverse of {@link annotatedName}; a plain name is in the input folder. */
export function parseAnnotated(name: string): ImageRef {
  const m = ANNOTATION.exec(name);
  const path = (m ? m[1] : name).trim();
  const type = m ? m[2] : "input";
  const cut = path.lastIndexOf("/");
  return { filename: path.slice(cut + 1), subfolder: cut > 0 ? path.slice(0, cut) : "", type };
}

/** The non-empty lines of an `images` widget, trimmed. */
export function imageLines(text: unknown): string[] {
  return typeof text === "string" ? text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean) : [];
}

function withLine(text: unknown, line: string): string {
  const kept = typeof text === "string" ? text.replace(/\s+$/, "") : "";
  return kept ? `${kept}\n${line}` : line;
}

function withoutLine(text: unknown, line: string): string {
  const lines = typeof text === "string" ? text.split(/\r?\n/) : [];
  return lines.filter((l) => l.trim() !== line).join("\n").replace(/\s+$/, "");
}

/** The FABRIC node feedback goes to: the first selected one, else the first in the graph. */
export function feedbackTarget(graph: Graph, selected: ReadonlySet<string> = new Set()): GraphNode | undefined {
  const fabric = graph.nodes.filter((n) => n.type === FABRIC_TYPE);
  return fabric.find((n) => selected.has(n.id)) ?? fabric[0];
}

type Source =
  | { kind: "none" }
  | { kind: "batch"; node: GraphNode }
  | { kind: "other"; node?: GraphNode; reason: string };

function sourceOf(graph: Graph, target: GraphNode, input: FeedbackKind, defs?: Defs): Source {
  const link = graph.links.find((l) => l.target === target.id && l.input === input);
  if (!link) return { kind: "none" };
  const node = graph.nodes.find((n) => n.id === link.source);
  if (!node || node.type !== BATCH_TYPE) {
    const what = node ? `${node.title ?? defs?.get(node.type)?.displayName ?? node.type} (node ${node.id})` : `node ${link.source}`;
    return { kind: "other", node, reason: `FABRIC's ${input} input is fed by ${what}, not a Load Image Batch: `
      + "link a Load Image Batch there, or remove the link, to pick images from the gallery" };
  }
  if (graph.links.some((l) => l.target === node.id && l.input === BATCH_INPUT)) {
    return { kind: "other", node, reason: `the Load Image Batch feeding FABRIC's ${input} input (node ${node.id}) `
      + "takes its images from a link: unlink it to pick images from the gallery" };
  }
  return { kind: "batch", node };
}

export type FeedbackState = {
  /** The FABRIC node acted on; null when the graph has none (no buttons are shown). */
  target: string | null;
  liked: ReadonlySet<string>;
  disliked: ReadonlySet<string>;
};

export const NO_FEEDBACK: FeedbackState = { target: null, liked: new Set(), disliked: new Set() };

/** Which annotated names the target FABRIC node's batches list now. */
export function feedbackState(graph: Graph, selected?: ReadonlySet<string>): FeedbackState {
  const target = feedbackTarget(graph, selected);
  if (!target) return NO_FEEDBACK;
  const lines = (kind: FeedbackKind) => {
    const src = sourceOf(graph, target, kind);
    return new Set(src.kind === "batch" ? imageLines(src.node.values[BATCH_INPUT]) : []);
  };
  return { target: target.id, liked: lines("liked"), disliked: lines("disliked") };
}

/** The state of one image: "liked", "disliked" or null. */
export function imageFeedback(state: FeedbackState, img: ImageRef): FeedbackKind | null {
  const name = annotatedName(img);
  return state.liked.has(name) ? "liked" : state.disliked.has(name) ? "disliked" : null;
}

export type FeedbackOp =
  | { op: "set"; node: string; input: typeof BATCH_INPUT; value: string }
  | { op: "add"; node: GraphNode; link: GraphLink };

export type FeedbackEdit =
  | { ok: true; ops: FeedbackOp[]; now: FeedbackKind | null; target: string }
  | { ok: false; reason: string };

/** Like (or dislike) `img` on the target FABRIC node, or undo that when it already is. */
export function toggleFeedback(graph: Graph, defs: Defs, img: ImageRef, kind: FeedbackKind,
  selected?: ReadonlySet<string>): FeedbackEdit {
  const target = feedbackTarget(graph, selected);
  if (!target) return { ok: false, reason: "no FABRIC Feedback node in the graph: add one to like or dislike images" };
  const name = annotatedName(img);
  const src = sourceOf(graph, target, kind, defs);
  if (src.kind === "other") return { ok: false, reason: src.reason };
  const ops: FeedbackOp[] = [];
  if (src.kind === "batch") {
    const text = src.node.values[BATCH_INPUT];
    if (imageLines(text).includes(name)) {
      return { ok: true, ops: [{ op: "set", node: src.node.id, input: BATCH_INPUT, value: withoutLine(text, name) }],
        now: null, target: target.id };
    }
    ops.push({ op: "set", node: src.node.id, input: BATCH_INPUT, value: withLine(text, name) });
  } else {
    if (!defs.has(BATCH_TYPE)) return { ok: false, reason: "this server has no Load Image Batch node" };
    const [dx, dy] = NEW_BATCH_OFFSET[kind];
    const node = createNode(defs, BATCH_TYPE, nextNodeId(graph.nodes.map((n) => n.id)),
      [target.pos[0] + dx, target.pos[1] + dy]);
    node.values[BATCH_INPUT] = name;
    node.title = kind === "liked" ? "Liked images" : "Disliked images";
    ops.push({ op: "add", node, link: { source: node.id, slot: 0, target: target.id, input: kind } });
  }
  // An image is liked or disliked, not both.
  const other = sourceOf(graph, target, kind === "liked" ? "disliked" : "liked");
  if (other.kind === "batch" && imageLines(other.node.values[BATCH_INPUT]).includes(name)) {
    ops.push({ op: "set", node: other.node.id, input: BATCH_INPUT,
      value: withoutLine(other.node.values[BATCH_INPUT], name) });
  }
  return { ok: true, ops, now: kind, target: target.id };
}

/** The graph after `ops` (what the editor does to its React Flow state). */
export function applyFeedbackOps(graph: Graph, ops: readonly FeedbackOp[]): Graph {
  let nodes = graph.nodes;
  let links = graph.links;
  for (const o of ops) {
    if (o.op === "set") {
      nodes = nodes.map((n) => (n.id === o.node ? { ...n, values: { ...n.values, [o.input]: o.value } } : n));
    } else {
      nodes = [...nodes, o.node];
      links = [...links.filter((l) => !(l.target === o.link.target && l.input === o.link.input)), o.link];
    }
  }
  return { ...graph, nodes, links };
}
