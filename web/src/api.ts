/**
 * The server's HTTP and websocket API (ComfyUI's protocol), at the page's own
 * origin. URLs are resolved against the page's folder so the app also works
 * behind a reverse proxy under a path prefix.
 */

import { errorMessage } from "./lib/errors";
import { parseJsonExact, stringifyJsonExact } from "./lib/exactint";
import { requiredModels } from "./lib/examples";
import { LIBRARY_DIR, userdataSegment } from "./lib/library";
import { partialFields } from "./lib/partial";
import type { ApiPrompt, WorkflowDocument } from "./lib/graph";
import type { ImageRef, NodeErrors, RunStore } from "./lib/runstore";
import { parsePreviewFrame } from "./lib/runstore";
import { type HistoryEntry, parseHistory } from "./lib/history";
import type { ObjectInfo } from "./lib/schema";

function base(): string {
  const path = window.location.pathname;
  return path.slice(0, path.lastIndexOf("/") + 1);
}

/** A `?token=` in the page's URL (a server started with --token) goes with every request. */
const TOKEN = new URLSearchParams(window.location.search).get("token");

export function apiUrl(path: string): string {
  const url = base() + path.replace(/^\//, "");
  if (!TOKEN) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}`;
}

export class ApiError extends Error {
  constructor(message: string, public status: number, public body: unknown) {
    super(message);
  }
}

/**
 * `exact`: integers beyond 2^53 (a seed's max 2^64-1) as bigints (`true`) or their text
 * (`"string"`), not the nearest double; `"text"`: a successful reply's body as its text, unread.
 */
async function request<T>(path: string, init?: RequestInit, exact: boolean | "string" | "text" = false): Promise<T> {
  const res = await fetch(apiUrl(path), init);
  const text = await res.text();
  if (res.ok && exact === "text") return text as T;
  let body: unknown = text;
  try {
    body = text ? (exact ? parseJsonExact(text, exact === "string" ? "string" : "bigint") : JSON.parse(text)) : null;
  } catch {
    // not JSON: keep the text
  }
  if (!res.ok) {
    throw new ApiError(errorMessage(body) ?? `${res.status} ${res.statusText}`, res.status, body);
  }
  return body as T;
}

function postJson<T>(path: string, body: unknown): Promise<T> {
  return request<T>(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: stringifyJsonExact(body), // a bigint (lib/exactint.ts) as its exact JSON number
  });
}

export const getObjectInfo = () => request<ObjectInfo>("object_info", undefined, true);

/** A node pack that failed to load, or (`whole` false) nodes of it that were skipped. */
export type PackError = { pack: string; message: string; whole: boolean };

/** The server's state and settings (ComfyUI's /system_stats; see lib/queueview.ts fairQueueOf). */
export const getSystemStats = () => request<unknown>("system_stats");

/** The server's node-pack load errors (none from a server that does not report them). */
export async function getPackErrors(): Promise<PackError[]> {
  const stats = await request<{ packs?: { errors?: PackError[] } }>("system_stats");
  const errors = stats.packs?.errors;
  return Array.isArray(errors) ? errors.filter((e) => e && typeof e.pack === "string") : [];
}

/** A validation warning of a queued prompt: reported, and the prompt runs anyway. */
export type PromptWarning = { kind: string; message: string; node_id?: string | null; input_name?: string | null };

export type QueueResult = { prompt_id: string; number?: number; node_errors?: NodeErrors; warnings?: PromptWarning[] };

/** ComfyUI's UI format (or any workflow the server reads) as our document, converted by the server. */
export const convertWorkflow = (workflow: unknown) =>
  postJson<{ document: unknown; warnings: string[]; source: string }>("workflow/convert", { workflow });

/** Any workflow the server reads as ComfyUI's UI format (`POST /workflow/export`): what the library saves. */
export const exportComfyWorkflow = (workflow: unknown) =>
  request<{ workflow: Record<string, unknown>; warnings: string[] }>("workflow/export", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: stringifyJsonExact({ workflow }),
  }, "string");

/** The workflow library's files, as ComfyUI's front end lists them. */
export const listLibrary = () =>
  request<unknown>(`userdata?dir=${LIBRARY_DIR}&recurse=true&split=false&full_info=true`);

/**
 * A user file's JSON (integers beyond 2^53 as their text, as the canvas keeps them). A file
 * that is not JSON is refused saying so ("not valid JSON: ..."): it was passed on as its text,
 * which the loader then called "not a JSON object".
 */
export async function readUserFile(userFile: string): Promise<unknown> {
  const text = await request<unknown>(userdataSegment(userFile), undefined, "text");
  try {
    return parseJsonExact(text as string, "string");
  } catch (e) {
    throw new Error(`not valid JSON: ${(e as Error).message}`);
  }
}

/** Write a user file; `overwrite` false: a 409 when it exists. */
export const writeUserFile = (userFile: string, text: string, overwrite: boolean) =>
  request<unknown>(`${userdataSegment(userFile)}?overwrite=${overwrite}&full_info=true`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: text,
  });

export const deleteUserFile = (userFile: string) =>
  request<unknown>(userdataSegment(userFile), { method: "DELETE" });

/** Rename a user file; over an existing one only when `overwrite` (else a 409). */
export const moveUserFile = (userFile: string, dest: string, overwrite = false) =>
  request<unknown>(`${userdataSegment(userFile)}/move/${encodeURIComponent(dest)}?overwrite=${overwrite}&full_info=true`,
    { method: "POST" });

/**
 * Queue a prompt; `targets` (output node ids) runs only those and what they need; `front`
 * puts it before the waiting prompts (ComfyUI's Ctrl+Shift+Enter).
 */
/**
 * Queue `prompt`. `promptId`: the id it gets (made here, so that the page knows which graph
 * queued it before any run message of it comes; the server makes one without).
 */
export async function queuePrompt(prompt: ApiPrompt, clientId: string, workflow: WorkflowDocument,
  targets?: string[], front = false, promptId?: string): Promise<QueueResult> {
  return postJson<QueueResult>("prompt", {
    prompt,
    ...(promptId ? { prompt_id: promptId } : {}),
    client_id: clientId,
    extra_data: { extra_pnginfo: { workflow } },
    ...partialFields(targets),
    ...(front ? { front: true } : {}),
  });
}

export type QueueItem = { number: number; promptId: string; prompt?: unknown; extra?: Record<string, unknown> };

function parseQueueItems(list: unknown): QueueItem[] {
  if (!Array.isArray(list)) return [];
  return list.map((item) => {
    if (Array.isArray(item)) {
      return { number: Number(item[0]), promptId: String(item[1]), prompt: item[2], extra: item[3] as Record<string, unknown> };
    }
    const o = item as Record<string, unknown>;
    return { number: Number(o.number), promptId: String(o.prompt_id), prompt: o.prompt, extra: o.extra_data as Record<string, unknown> };
  });
}

export async function getQueue(): Promise<{ running: QueueItem[]; pending: QueueItem[] }> {
  const q = await request<{ queue_running?: unknown; queue_pending?: unknown }>("queue");
  return {
    running: parseQueueItems(q?.queue_running),
    pending: parseQueueItems(q?.queue_pending).sort((a, b) => a.number - b.number),
  };
}

export const deleteFromQueue = (ids: string[]) => postJson("queue", { delete: ids });
export const clearQueue = () => postJson("queue", { clear: true });
export const interrupt = (promptId?: string) => postJson("interrupt", promptId ? { prompt_id: promptId } : {});

export type { HistoryEntry } from "./lib/history";

export async function getHistory(maxItems = 30): Promise<HistoryEntry[]> {
  // a seed beyond 2^53 keeps its digits (as a loaded file's do: lib/load.ts), shown and loaded exact
  return parseHistory(await request<Record<string, Record<string, unknown>>>(`history?max_items=${maxItems}`,
    undefined, "string"));
}

export const clearHistory = () => postJson("history", { clear: true });
/** Delete history entries by prompt id (ComfyUI's `POST /history {"delete": [...]}`). */
export const deleteHistory = (ids: string[]) => postJson("history", { delete: ids });

export function viewUrl(img: ImageRef, preview = false): string {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder ?? "", type: img.type ?? "output" });
  if (preview) q.set("preview", "webp;80");
  return apiUrl(`view?${q}`);
}

export async function uploadImage(file: File): Promise<string> {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("type", "input");
  const res = await request<{ name: string; subfolder?: string }>("upload/image", { method: "POST", body: form });
  return res.subfolder ? `${res.subfolder}/${res.name}` : res.name;
}

/** Upload a webcam capture into temp/webcam/, as ComfyUI's front end does (`{name, subfolder}` back). */
export async function uploadCapture(file: File): Promise<{ name: string; subfolder: string }> {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("type", "temp");
  form.append("subfolder", "webcam");
  const res = await request<{ name: string; subfolder?: string }>("upload/image", { method: "POST", body: form });
  return { name: res.name, subfolder: res.subfolder ?? "" };
}

/** One channel of an image as a PNG (`/view?channel=rgb|a`): its colour without alpha, or its alpha as grey. */
export function channelUrl(img: ImageRef, channel: "rgb" | "a"): string {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder ?? "", type: img.type ?? "input", channel });
  return apiUrl(`view?${q}`);
}

/**
 * Save a painted mask as ComfyUI's mask editor does (`POST /upload/mask`): `mask` is a PNG
 * whose alpha holds it, `original` the image it masks; the server stores the original with
 * that alpha in input/clipspace/ and answers `{name, subfolder, type}`.
 */
export async function uploadMask(mask: Blob, filename: string, original: ImageRef):
  Promise<{ name: string; subfolder: string; type: string }> {
  const form = new FormData();
  form.append("image", mask, filename);
  form.append("original_ref", JSON.stringify({
    filename: original.filename, subfolder: original.subfolder ?? "", type: original.type ?? "input",
  }));
  form.append("type", "input");
  form.append("subfolder", "clipspace");
  const res = await request<{ name: string; subfolder?: string; type?: string }>("upload/mask", { method: "POST", body: form });
  if (!res || typeof res.name !== "string") throw new Error("the server's reply names no saved file");
  return { name: res.name, subfolder: res.subfolder ?? "clipspace", type: res.type ?? "input" };
}

export type ExampleRef = { name: string; title: string };

/** An example as the examples browser shows it (`/workflows?details=1`). */
export type ExampleInfo = ExampleRef & {
  description: string;
  /** The thumbnail's URL (what the example makes, as shipped), or null: a placeholder. */
  thumbnail: string | null;
  /** Models the example needs that are not built in (they are never downloaded). */
  requiresModels: string[];
};

export async function listExamples(): Promise<ExampleInfo[]> {
  const body = await request<unknown>("workflows?details=1");
  if (!Array.isArray(body)) return [];
  return body.flatMap((item): ExampleInfo[] => {
    if (!item || typeof item !== "object") return [];
    const o = item as Record<string, unknown>;
    const name = typeof o.name === "string" ? o.name : "";
    if (!name) return [];
    return [{
      name,
      title: typeof o.title === "string" && o.title ? o.title : name.replace(/\.json$/i, ""),
      description: typeof o.description === "string" ? o.description : "",
      thumbnail: typeof o.thumbnail === "string" && o.thumbnail ? apiUrl(o.thumbnail) : null,
      requiresModels: requiredModels(o.requires_models),
    }];
  });
}

/** What a built-in model is for: its native size and what it can draw (`/models/<folder>?info=1`). */
export type ModelCard = {
  native_size?: [number, number]; summary?: string; draws?: string; prompt_example?: string; notes?: string;
};

export async function getModelCards(folder: string): Promise<Record<string, ModelCard>> {
  const body = await request<unknown>(`models/${encodeURIComponent(folder)}?info=1`);
  const out: Record<string, ModelCard> = {};
  if (!Array.isArray(body)) return out;
  for (const item of body) {
    const o = item as { name?: unknown; info?: unknown };
    if (typeof o?.name === "string" && o.info && typeof o.info === "object") out[o.name] = o.info as ModelCard;
  }
  return out;
}

export const getWorkflow = (name: string) =>
  request<unknown>(`workflows/${name.split("/").map(encodeURIComponent).join("/")}`);

/** Keeps a websocket to /ws open, feeding the run store; reconnects with back-off. */
export class Socket {
  private ws: WebSocket | null = null;
  private retry = 0;
  private closed = false;
  private timer: ReturnType<typeof setTimeout> | null = null;

  /** `onFirstOpen`: once, when the first connection opens (e.g. take back this tab's running prompt). */
  constructor(public clientId: string, private store: RunStore, private onReconnect: () => void,
    private onFirstOpen: () => void = () => undefined) {}

  private opened = false;

  open(): void {
    this.closed = false;
    const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${proto}//${window.location.host}${apiUrl(`ws?clientId=${encodeURIComponent(this.clientId)}`)}`;
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      const again = this.retry > 0;
      this.retry = 0;
      this.store.setConnected(true);
      if (again) this.onReconnect();
      if (!this.opened) {
        this.opened = true;
        this.onFirstOpen();
      }
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") {
        let msg: { type?: string; data?: Record<string, unknown> };
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (!msg || typeof msg.type !== "string") return;
        if (msg.type === "status" && typeof msg.data?.sid === "string") this.clientId = msg.data.sid;
        this.store.enqueue({ type: msg.type, data: msg.data });
      } else if (ev.data instanceof ArrayBuffer) {
        const frame = parsePreviewFrame(ev.data);
        if (frame) {
          const url = URL.createObjectURL(new Blob([frame.bytes as BlobPart], { type: frame.mime }));
          this.store.enqueuePreview(url);
        }
      }
    };
    ws.onclose = () => {
      this.store.setConnected(false);
      if (this.closed) return;
      const delay = Math.min(5000, 500 * 2 ** this.retry++);
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.ws?.close();
  }
}

/** A new prompt id (a UUID; randomUUID needs a secure context, so not on a remote http server). */
export function makePromptId(): string {
  if (typeof crypto !== "undefined" && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const hex = (n: number) => Array.from({ length: n }, () => Math.floor(Math.random() * 16).toString(16)).join("");
  return `${hex(8)}-${hex(4)}-4${hex(3)}-${hex(4)}-${hex(12)}`;
}

export function makeClientId(): string {
  const key = "steerflow.clientId";
  let id = sessionStorage.getItem(key);
  if (!id) {
    id = crypto.randomUUID ? crypto.randomUUID().replace(/-/g, "") : Math.random().toString(36).slice(2);
    sessionStorage.setItem(key, id);
  }
  return id;
}
