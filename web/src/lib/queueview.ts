/**
 * Whose prompts the server is running. The websocket's run events (executing, progress)
 * go only to the client that queued a prompt, as in ComfyUI, while the queue is shared:
 * the status bar tells a user that the queue is busy with someone else's prompt.
 */

import type { QueueItem } from "../api";

/** The client a queued prompt came from (the server keeps it in `extra_data`). */
export function clientOf(item: QueueItem): string | null {
  const id = item.extra?.client_id;
  return typeof id === "string" ? id : null;
}

/** How many of the `running` prompts were queued by a client other than `clientId`. */
export function othersRunning(running: QueueItem[], clientId: string | null | undefined): number {
  return running.filter((item) => clientOf(item) !== (clientId ?? null)).length;
}

/** The status bar's words for `n` prompts of other clients running ("" for none). */
export function othersRunningText(n: number): string {
  if (n <= 0) return "";
  return n === 1 ? "running another client's prompt" : `running ${n} other clients' prompts`;
}

/** The nodes of a queued prompt that run: a muted or bypassed one never does. */
export function runnableCount(prompt: unknown): number {
  if (!prompt || typeof prompt !== "object") return 0;
  return Object.values(prompt as Record<string, { mode?: unknown } | null>)
    .filter((n) => !(n && typeof n === "object" && (n.mode === "muted" || n.mode === "bypass"))).length;
}

/**
 * Whether the server takes the waiting prompts in turns over their clients (`--fair-queue`),
 * read from /system_stats (`system.fair_queue`). Absent (an older server, ComfyUI): prompts run in number order.
 */
export function fairQueueOf(stats: unknown): boolean {
  return (stats as { system?: { fair_queue?: unknown } } | null)?.system?.fair_queue === true;
}

/**
 * The Queue tab's note on the run order: only a server with fair queueing runs the prompts of
 * several waiting clients out of number order; otherwise they run by number (ComfyUI's order).
 */
export function turnsNote(fair: boolean, pending: QueueItem[]): string | null {
  if (!fair || new Set(pending.map(clientOf)).size < 2) return null;
  return "Several clients are waiting: the server runs their prompts in turns, so the numbers are not the run order.";
}

/** A prompt's number as the queue and history show it: ComfyUI numbers a prompt queued at
 * the front (Ctrl+Shift+Enter) below every other, so negative ("#-25"): "front" instead. */
export function promptNumberText(n: number): string {
  return n < 0 ? "front" : `#${n}`;
}
