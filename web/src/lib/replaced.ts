/**
 * Graphs replaced in this browser: opening another graph (an example, a file, a History
 * entry) or clearing the canvas keeps the graph shown before, so unsaved work is never lost
 * for good (undo brings it back only until the page is reloaded). The newest MAX_REPLACED
 * are kept in localStorage under REPLACED_KEY as `[{ t, name, doc }]`, newest first; a graph
 * equal to the newest one kept is not kept twice. Best effort: a full storage drops the oldest.
 */

export const REPLACED_KEY = "steerflow.replaced";
export const MAX_REPLACED = 5;
/** A graph larger than this (characters of its JSON) is not kept: it would crowd out autosaves. */
export const MAX_REPLACED_CHARS = 2_000_000;

/** Sent on `window` when a graph was kept (lists of them read again). */
export const GRAPHS_KEPT_EVENT = "steerflow:graphs-kept";

export type ReplacedGraph = { t: number; name: string; doc: string };

type Store = Pick<Storage, "getItem" | "setItem">;

export function listReplaced(store: Store): ReplacedGraph[] {
  try {
    const list: unknown = JSON.parse(store.getItem(REPLACED_KEY) ?? "[]");
    return Array.isArray(list)
      ? list.filter((g): g is ReplacedGraph => typeof g?.doc === "string" && typeof g?.t === "number"
        && typeof g?.name === "string")
      : [];
  } catch {
    return [];
  }
}

/** Keep `doc` (a document's JSON) as replaced now, under `name`. Returns whether it was kept. */
export function keepReplaced(store: Store, doc: string, name: string, now = Date.now()): boolean {
  if (doc.length > MAX_REPLACED_CHARS) return false;
  const before = listReplaced(store);
  if (before[0]?.doc === doc) return false;
  let list = [{ t: now, name, doc }, ...before.filter((g) => g.doc !== doc)].slice(0, MAX_REPLACED);
  while (list.length) {
    try {
      store.setItem(REPLACED_KEY, JSON.stringify(list));
      if (typeof window !== "undefined") window.dispatchEvent(new Event(GRAPHS_KEPT_EVENT));
      return true;
    } catch {
      list = list.slice(0, -1); // storage full: fewer graphs
    }
  }
  return false;
}
