/**
 * Open anything a person may drop or pick: our document, an API-format prompt
 * (or a POST /prompt body), a ComfyUI UI-format workflow, or a PNG carrying
 * one of those in its text chunks.
 *
 * ComfyUI's UI format is converted by the server (`POST /workflow/convert`,
 * the same converter as the CLI's and the Python API's, driven by the node
 * schemas); everything else is read here.
 */

import { parseJsonExact } from "./exactint";
import { documentToGraph, type Graph, hasRestorableRaw, isDocument, promptToGraph, WorkflowFormatError } from "./graph";
import { comfyNodeSlots } from "./missingnode";
import { isPng, readPngText } from "./png";
import { isVirtual } from "./reroute";
import type { Defs } from "./schema";

export type Loaded = { graph: Graph; warnings: string[]; kind: "document" | "api" | "comfyui" };

/** Turns a ComfyUI UI-format workflow into our document (the server's `/workflow/convert`). */
export type Converter = (workflow: unknown) => Promise<{ document: unknown; warnings: string[] }>;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Is this ComfyUI's UI (litegraph) format rather than an API prompt or our document? */
export function isComfyUiWorkflow(obj: unknown): boolean {
  return isObject(obj) && Array.isArray(obj.nodes) && (Array.isArray(obj.links) || isObject(obj.links)) &&
    obj.format === undefined;
}

export function looksLikePrompt(obj: Record<string, unknown>): boolean {
  const values = Object.values(obj);
  return values.length > 0 && values.every((n) => isObject(n) && typeof n.class_type === "string");
}

/** The server converter's word on node types it lacks: "node type X is not available here (node 12, 14)". */
const SERVER_UNKNOWN = /^node type (.+) is not available here \(nodes? ([^)]*)\)$/;
/** The client's own (lib/graph.ts): "node 12: unknown node type X". */
const CLIENT_UNKNOWN = /^node (\S+): unknown node type (.+)$/;

/**
 * The converter's warnings, then the client's own check's, one per node for an unknown node
 * type: both name such a node (the drill's SVD_img2vid_Conditioning was told twice, using up
 * two of the three warning toasts), so a client warning about a node the converter already
 * named is dropped. Repeats of one text are dropped too.
 */
export function mergeWarnings(server: readonly string[], client: readonly string[]): string[] {
  const named = new Set<string>();
  for (const w of server) {
    const m = SERVER_UNKNOWN.exec(w);
    if (m) for (const id of m[2].split(/,\s*/)) named.add(id.trim());
  }
  const out: string[] = [];
  for (const w of server) if (!out.includes(w)) out.push(w);
  for (const w of client) {
    const m = CLIENT_UNKNOWN.exec(w);
    if (m && named.has(m[1])) continue;
    if (m) named.add(m[1]);
    if (!out.includes(w)) out.push(w);
  }
  return out;
}

export async function loadWorkflowObject(obj: unknown, defs: Defs, convert: Converter): Promise<Loaded> {
  if (isDocument(obj)) {
    // a ComfyUI node kept with raw widget values whose type is installed now: the server
    // names them (engine/comfy_raw.py), as it converts ComfyUI's files
    if (hasRestorableRaw(obj, (type) => !!defs.get(type))) {
      const { document, warnings } = await convert(obj);
      const loaded = documentToGraph(document, defs);
      return { graph: loaded.graph, warnings: mergeWarnings(warnings ?? [], loaded.warnings), kind: "document" };
    }
    return { ...documentToGraph(obj, defs), kind: "document" };
  }
  if (isComfyUiWorkflow(obj)) {
    const { document, warnings } = await convert(obj);
    const loaded = documentToGraph(document, defs);
    // a node of a type this server lacks keeps the slots the file gave it (lib/missingnode.ts):
    // its links are drawn, and they are saved with it
    const missing = loaded.graph.nodes.filter((n) => !isVirtual(n.type) && !defs.get(n.type) && !n.slots);
    if (missing.length) {
      const slots = comfyNodeSlots(obj);
      for (const n of missing) {
        const s = slots.get(n.id);
        if (s) n.slots = s;
      }
    }
    return { graph: loaded.graph, warnings: mergeWarnings(warnings ?? [], loaded.warnings), kind: "comfyui" };
  }
  if (!isObject(obj)) throw new WorkflowFormatError("a workflow must be a JSON object");
  // The body of a POST /prompt, possibly with our document inside.
  if (isObject(obj.prompt) && obj.format === undefined) {
    const extra = isObject(obj.extra_data) ? obj.extra_data : undefined;
    const info = extra && isObject(extra.extra_pnginfo) ? extra.extra_pnginfo : undefined;
    if (info && isDocument(info.workflow)) return loadWorkflowObject(info.workflow, defs, convert);
    return loadWorkflowObject(obj.prompt, defs, convert);
  }
  if (looksLikePrompt(obj)) return { ...promptToGraph(obj, defs), kind: "api" };
  throw new WorkflowFormatError("not a workflow: expected a Steerflow document, an API-format prompt or a ComfyUI workflow");
}

function parseJson(text: string, what: string): unknown {
  try {
    // a seed beyond 2^53 keeps its digits (as text, what the canvas stores; lib/exactint.ts)
    return parseJsonExact(text, "string");
  } catch (e) {
    throw new WorkflowFormatError(`${what} is not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * The workflow carried by a PNG's text chunks: our own document (`steerflow`; older
 * images kept it under `workflow`, where ComfyUI's UI format now goes), then `workflow`,
 * then `prompt`.
 */
export async function loadWorkflowPng(bytes: Uint8Array, defs: Defs, convert: Converter): Promise<Loaded> {
  const text = await readPngText(bytes);
  if (text.steerflow) {
    try {
      return await loadWorkflowObject(parseJson(text.steerflow, "the image's workflow"), defs, convert);
    } catch (e) {
      if (!text.workflow && !text.prompt) throw e;
    }
  }
  if (text.workflow) {
    try {
      return await loadWorkflowObject(parseJson(text.workflow, "the image's workflow"), defs, convert);
    } catch (e) {
      if (!text.prompt) throw e;
    }
  }
  if (text.prompt) return loadWorkflowObject(parseJson(text.prompt, "the image's prompt"), defs, convert);
  throw new WorkflowFormatError("this image carries no workflow (no 'workflow' or 'prompt' text chunk)");
}

const OPENABLE = "open a .json workflow (Steerflow, API or ComfyUI format) or a PNG made by Steerflow or ComfyUI";

export async function loadWorkflowBytes(name: string, bytes: Uint8Array, defs: Defs, convert: Converter): Promise<Loaded> {
  if (isPng(bytes)) return loadWorkflowPng(bytes, defs, convert);
  const text = new TextDecoder("utf-8").decode(bytes);
  const named = /\.[A-Za-z0-9]+$/.test(name);
  if (named && !/\.json$/i.test(name)) {
    // notes.txt, photo.jpg: say what can be opened rather than quote the JSON parser
    let obj: unknown;
    try {
      obj = parseJsonExact(text, "string");
    } catch {
      throw new WorkflowFormatError(`${name} is not a workflow: ${OPENABLE}`);
    }
    return loadWorkflowObject(obj, defs, convert);
  }
  return loadWorkflowObject(parseJson(text, name || "the file"), defs, convert);
}
