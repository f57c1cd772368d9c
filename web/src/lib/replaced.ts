/**
 * Graphs replaced in this browser: opening another graph (an example, a file, a History
 * entry) or clearing the canvas keeps the graph shown before, so unsaved work is never lost
 * for good (undo brings it back only until the page is reloaded). Each graph has its own
 * localStorage key, `REPLACED_PREFIX<t>-<random>` holding `{ t, name, doc }`, so two tabs
 * keeping graphs at the same moment never overwrite each other (one shared list did); the
 * newest MAX_REPLACED are kept. A graph equal to one kept already (its view aside) is not
 * kept twice.
 */

export const REPLACED_PREFIX = "steerflow.replaced.";
export const MAX_REPLACED = 5;
/** A graph larger than this (characters of its JSON) is not kept: it would crowd out autosaves. */
export const MAX_REPLACED_CHARS = 2_000_000;

/** Sent on `window` when a graph was kept (lists of them read again). */
export const GRAPHS_KEPT_EVENT = "steerflow:graphs-kept";

export type ReplacedGraph = { t: number; name: string; doc: string; key: string };
export type KeepResult = "kept" | "known" | "too-large" | "no-room";

type Store = Pick<Storage, "getItem" | "setItem" | "removeItem" | "key" | "length">;

/** The graph of a document's JSON with its saved view left out: two visits of a graph compare equal. */
function sameGraph(doc: string): string {
  try {
    const d = JSON.parse(doc) as { layout?: { viewport?: unknown } };
    if (d?.layout) delete d.layout.viewport;
    return JSON.stringify(d);
  } catch {
    return doc;
  }
}

/** The kept graphs, newest first. */
export function listReplaced(store: Store): ReplacedGraph[] {
  const out: ReplacedGraph[] = [];
  const keys: string[] = [];
  for (let i = 0; i < store.length; i++) {
    const key = store.key(i);
    if (key?.startsWith(REPLACED_PREFIX)) keys.push(key);
  }
  for (const key of keys) {
    try {
      const g = JSON.parse(store.getItem(key) ?? "null") as Partial<ReplacedGraph> | null;
      if (typeof g?.doc === "string" && typeof g.t === "number" && typeof g.name === "string") {
        out.push({ t: g.t, name: g.name, doc: g.doc, key });
      }
    } catch {
      // a broken entry: not listed
    }
  }
  return out.sort((a, b) => b.t - a.t);
}

/** Keep `doc` (a document's JSON) as replaced now, under `name`. */
export function keepReplaced(store: Store, doc: string, name: string, now = Date.now()): KeepResult {
  if (doc.length > MAX_REPLACED_CHARS) return "too-large";
  const before = listReplaced(store);
  const graph = sameGraph(doc);
  if (before.some((g) => sameGraph(g.doc) === graph)) return "known";
  const key = `${REPLACED_PREFIX}${now}-${Math.random().toString(36).slice(2, 8)}`;
  const older = before.slice(MAX_REPLACED - 1);
  const kept = before.slice(0, MAX_REPLACED - 1);
  const dropped: ReplacedGraph[] = [];
  for (;;) {
    try {
      store.setItem(key, JSON.stringify({ t: now, name, doc }));
      break;
    } catch {
      const oldest = older.pop() ?? kept.pop(); // storage full: drop the oldest kept
      if (!oldest) {
        // it does not fit even alone: the graphs dropped for it come back
        for (const g of dropped) {
          try {
            store.setItem(g.key, JSON.stringify({ t: g.t, name: g.name, doc: g.doc }));
          } catch {
            break;
          }
        }
        return "no-room";
      }
      store.removeItem(oldest.key);
      dropped.push(oldest);
    }
  }
  for (const g of older) store.removeItem(g.key);
  if (typeof window !== "undefined") window.dispatchEvent(new Event(GRAPHS_KEPT_EVENT));
  return "kept";
}
