/**
 * ComfyUI's `WEBCAM` widget (Webcam Capture's `image`): a camera preview whose capture is
 * uploaded to `temp/webcam/` (as ComfyUI's front end does), the value being the annotated
 * name `webcam/<name>.png [temp]` that Load Image reads. With `capture_on_queue` on, Queue
 * takes a fresh capture first: a mounted widget with a live camera registers its capture
 * function here, and the queue asks for every such node before it builds the prompt.
 */

export const WEBCAM_TYPE = "WebcamCapture";
export const WEBCAM_SUBFOLDER = "webcam";
/** The capture's size when width / height are 0 and the camera reports none (ComfyUI's). */
export const DEFAULT_CAPTURE: Readonly<{ width: number; height: number }> = { width: 640, height: 480 };
/** The largest capture drawn (the server's MAX_RESOLUTION). */
export const MAX_CAPTURE_SIDE = 16384;

/** The value naming an uploaded capture, as the server replied (`{name, subfolder}`). */
export function captureValue(name: string, subfolder = WEBCAM_SUBFOLDER): string {
  const sub = subfolder.replace(/^\/+|\/+$/g, "");
  return `${sub ? `${sub}/` : ""}${name} [temp]`;
}

/** The file name of a capture taken at `now` (ms), ComfyUI's: `<timestamp>.png`. */
export function captureFileName(now: number): string {
  return `${Math.floor(now)}.png`;
}

/** The size to draw a capture at: the width / height widgets, else the camera's, else 640×480. */
export function captureSize(width: unknown, height: unknown, videoWidth: number, videoHeight: number): { width: number; height: number } {
  const pick = (v: unknown, own: number, dflt: number) => {
    const n = typeof v === "number" && Number.isFinite(v) && v > 0 ? Math.round(v) : own > 0 ? Math.round(own) : dflt;
    return Math.min(MAX_CAPTURE_SIDE, Math.max(1, n));
  };
  return { width: pick(width, videoWidth, DEFAULT_CAPTURE.width), height: pick(height, videoHeight, DEFAULT_CAPTURE.height) };
}

/** Takes a capture, uploads it and returns its value; null when the camera is not live. */
export type Capturer = () => Promise<string | null>;

const capturers = new Map<string, Capturer>();

/** Register a node's capture function; returns the function that takes it out again. */
export function registerCapturer(nodeId: string, capture: Capturer): () => void {
  capturers.set(nodeId, capture);
  return () => {
    if (capturers.get(nodeId) === capture) capturers.delete(nodeId);
  };
}

type NodeLike = { id: string; type: string; values: Readonly<Record<string, unknown>> };

/** The Webcam Capture nodes whose capture is taken on Queue (capture_on_queue on, the default). */
export function capturesOnQueue(nodes: readonly NodeLike[]): string[] {
  return nodes.filter((n) => n.type === WEBCAM_TYPE && n.values.capture_on_queue !== false).map((n) => n.id);
}

/**
 * Fresh captures for the nodes that take one on Queue: node id → new value. A node whose
 * camera is not live (denied, not yet started, no widget mounted) keeps its value, which the
 * server then checks; a failed upload is an error naming the node.
 */
export async function captureAll(nodes: readonly NodeLike[], registry: ReadonlyMap<string, Capturer> = capturers): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const id of capturesOnQueue(nodes)) {
    const capture = registry.get(id);
    if (!capture) continue;
    let value: string | null;
    try {
      value = await capture();
    } catch (e) {
      throw new Error(`Webcam Capture #${id}: the capture could not be uploaded (${(e as Error).message})`);
    }
    if (value) out.set(id, value);
  }
  return out;
}

/** Why the camera is not shown, in words a person can act on. */
export function cameraErrorText(error: unknown, secure: boolean): string {
  const name = error && typeof error === "object" && "name" in error ? String((error as { name: unknown }).name) : "";
  const message = error instanceof Error ? error.message : String(error ?? "");
  if (!secure) return "The camera needs a secure page: open the canvas on localhost or over https.";
  if (name === "NotAllowedError" || name === "SecurityError") return "The camera was blocked: allow it for this page in the browser, then press Retry.";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "No camera was found: connect one, then press Retry.";
  if (name === "NotReadableError") return "The camera is in use by another program: close it, then press Retry.";
  if (name === "NoMediaDevices") return "This browser gives no camera access to pages.";
  return `The camera could not start${message ? `: ${message}` : ""}.`;
}
