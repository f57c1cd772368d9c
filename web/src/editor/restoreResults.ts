/**
 * Results survive a reload: the open graph's nodes get their newest outputs from /history.
 * Prompts of the graph still queued or running when the page loads (e.g. queued by the tab
 * closed before, whose run events go to that tab only) are watched: when one finishes, its
 * outputs are restored too, so an output node shows the newest result, not an older one.
 */

import { getHistory, getQueue, type HistoryEntry, type QueueItem } from "../api";
import { type GraphPrompt, outputsForGraph } from "../lib/history";
import type { GalleryItem, RunStore } from "../lib/runstore";

const HISTORY_ITEMS = 50;
/** How often the queue is read while a watched prompt is not finished (besides each queue change). */
const WATCH_POLL_MS = 3000;

type NodeRef = { id: string; type: string };
type Api = {
  getQueue(): Promise<{ running: QueueItem[]; pending: QueueItem[] }>;
  getHistory(maxItems: number): Promise<HistoryEntry[]>;
};
const serverApi: Api = { getQueue, getHistory };

function galleryOf(entries: readonly HistoryEntry[]): GalleryItem[] {
  return entries.flatMap((e) => Object.entries(e.outputs).flatMap(([node, o]) =>
    (o.images ?? []).map((img, i) => ({
      ...img, node, promptId: e.promptId, key: `${e.promptId}:${node}:${i}:${img.subfolder ?? ""}/${img.filename}`,
    }))));
}

/** Whether a queued prompt runs any node of the graph (same id, same type): its outputs would belong there. */
export function promptOfGraph(prompt: unknown, nodes: readonly NodeRef[]): boolean {
  if (!prompt || typeof prompt !== "object") return false;
  const p = prompt as Record<string, { class_type?: unknown } | undefined>;
  return nodes.some((n) => p[n.id]?.class_type === n.type);
}

/**
 * Put the newest outputs of the open graph back on its nodes. `graph`: its prompt, so that
 * only outputs of prompts that ran this graph are put back (lib/history.ts's outputsForGraph).
 * The gallery gets back the images of the prompts this tab queued (`clientId`, kept across a
 * reload), never another client's.
 */
export async function restoreResults(store: RunStore, nodes: NodeRef[], api: Api = serverApi,
  graph?: GraphPrompt, clientId?: string): Promise<void> {
  const entries = await api.getHistory(HISTORY_ITEMS); // newest first
  const mine = clientId === undefined ? [] : entries.filter((e) => e.extra?.client_id === clientId);
  store.restoreResults(outputsForGraph(entries, nodes, graph), galleryOf(mine));
}

/**
 * Watch the prompts of the graph that are queued or running now; each one that leaves the
 * queue gets its outputs restored from /history (over older results; not over what ran in
 * this page since). Reads the queue at each queue change the store sees and every few
 * seconds while any is left. `nodes` gives the open graph's nodes when a prompt finishes,
 * `graph` its prompt (only outputs of that graph are put back).
 * Returns a function that stops watching.
 */
export function watchInFlight(store: RunStore, nodes: () => NodeRef[], api: Api = serverApi,
  pollMs = WATCH_POLL_MS, graph?: () => GraphPrompt): { stop(): void; ready: Promise<void>; check(): Promise<void> } {
  const watched = new Set<string>();
  let stopped = false;
  let busy: Promise<void> | null = null;
  let again = false;
  let timer: ReturnType<typeof setInterval> | null = null;
  let unsubscribe: (() => void) | null = null;

  const stop = () => {
    stopped = true;
    if (timer) clearInterval(timer);
    timer = null;
    unsubscribe?.();
    unsubscribe = null;
  };

  const look = async (): Promise<void> => {
    const q = await api.getQueue();
    if (stopped) return;
    const inQueue = new Set([...q.running, ...q.pending].map((i) => i.promptId));
    const finished = [...watched].filter((id) => !inQueue.has(id));
    if (!finished.length) return;
    const entries = (await api.getHistory(HISTORY_ITEMS)).filter((e) => finished.includes(e.promptId));
    if (stopped) return;
    // a prompt not in the history yet (it is being written) is looked at again next time
    const done = new Set(entries.map((e) => e.promptId));
    for (const id of done) watched.delete(id);
    if (entries.length) store.restoreResults(outputsForGraph(entries, nodes(), graph?.()), galleryOf(entries), { newer: true });
    if (!watched.size) stop();
  };

  /** Look now (once at a time; a call while one runs looks again after it). */
  const check = (): Promise<void> => {
    if (stopped || !watched.size) return Promise.resolve();
    if (busy) {
      again = true;
      return busy;
    }
    busy = look().catch(() => undefined).finally(() => {
      busy = null;
      if (again) {
        again = false;
        void check();
      }
    });
    return busy;
  };

  const ready = api.getQueue().then((q) => {
    if (stopped) return;
    const graph = nodes();
    for (const item of [...q.running, ...q.pending]) if (promptOfGraph(item.prompt, graph)) watched.add(item.promptId);
    if (!watched.size) {
      stop();
      return;
    }
    let version = store.getGlobal().queueVersion;
    unsubscribe = store.subscribe(() => {
      const v = store.getGlobal().queueVersion;
      if (v === version) return;
      version = v;
      void check();
    });
    if (pollMs > 0) timer = setInterval(() => void check(), pollMs);
  }).catch(() => stop());

  return { stop, ready, check };
}
