/**
 * What a paste (Ctrl+V on the canvas) brings from the system clipboard, as ComfyUI reads it:
 * an image (to a Load Image node, or its embedded workflow opened, as a dropped image), a
 * workflow's JSON (opened, as a dropped .json), or nodes copied on the canvas. Plain data.
 */

import { parseJsonExact } from "./exactint";
import { type Graph, type GraphLink, isDocument } from "./graph";
import { isComfyUiWorkflow, looksLikePrompt } from "./load";
import type { Defs } from "./schema";
import { checkConnection, type GraphView } from "./types";

/** The key that marks nodes copied on the canvas, in the text a node copy puts on the clipboard. */
export const CLIP_MARK = "steerflow.clipboard";

/** The clipboard text of nodes copied on the canvas (so that a later paste takes them, not an older image). */
export function clipText(clip: object): string {
  return JSON.stringify({ [CLIP_MARK]: clip });
}

export type Pasted<F> =
  | { kind: "image"; file: F }
  | { kind: "workflow"; workflow: unknown }
  | { kind: "clip"; clip: unknown }
  /** Nothing the canvas reads: paste the nodes copied on the canvas (its own clipboard), as before. */
  | { kind: "nodes" };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Whether `obj` is a workflow the canvas opens: our document, ComfyUI's UI format, an API prompt or a POST /prompt body. */
export function isWorkflowObject(obj: unknown): boolean {
  if (!isObject(obj)) return false;
  if (isDocument(obj) || isComfyUiWorkflow(obj)) return true;
  if (isObject(obj.prompt) && obj.format === undefined) return looksLikePrompt(obj.prompt);
  return looksLikePrompt(obj);
}

/**
 * What to do with a paste of `files` and `text`: nodes copied on the canvas, then an image
 * file, then a workflow's JSON text; anything else pastes the canvas's own clipboard.
 */
export function readPasted<F extends { type: string; name: string }>(files: readonly F[], text: string): Pasted<F> {
  let obj: unknown;
  const trimmed = text.trim();
  if (trimmed.startsWith("{")) {
    try {
      obj = parseJsonExact(trimmed, "string"); // a seed beyond 2^53 keeps its digits
    } catch {
      obj = undefined;
    }
  }
  if (isObject(obj) && CLIP_MARK in obj) return { kind: "clip", clip: obj[CLIP_MARK] };
  const image = files.find((f) => f.type.startsWith("image/") || /\.(png|jpe?g|webp|gif|bmp|avif)$/i.test(f.name));
  if (image) return { kind: "image", file: image };
  if (isWorkflowObject(obj)) return { kind: "workflow", workflow: obj };
  return { kind: "nodes" };
}

/**
 * The links into pasted nodes that Ctrl+Shift+V keeps: from a node still in `graph` under
 * its id, of the type it had when copied (`sources`: id → type; another graph reuses the
 * ids for other nodes), and that the link rules accept (type, cycle). `idMap`: copied id →
 * pasted id. Returns them (targets renamed) and how many were dropped.
 */
export function pastedInputs(graph: Graph, inputs: readonly GraphLink[], sources: Readonly<Record<string, string>> | undefined,
  idMap: ReadonlyMap<string, string>, defs: Defs): { kept: GraphLink[]; dropped: number } {
  const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
  const links: GraphLink[] = [...graph.links];
  const view: GraphView = { nodeType: (id) => types.get(id), links };
  const kept: GraphLink[] = [];
  let dropped = 0;
  for (const l of inputs) {
    const target = idMap.get(l.target);
    if (target === undefined) continue;
    const link = { ...l, target };
    const sameSource = types.has(l.source) && (sources?.[l.source] ?? types.get(l.source)) === types.get(l.source);
    if (!sameSource || !checkConnection(view, defs, link).ok) {
      dropped += 1;
      continue;
    }
    kept.push(link);
    links.push(link);
  }
  return { kept, dropped };
}
