/**
 * What an undo or redo changed: the inputs whose value or link differs between two
 * prompts, so that the last run's message about an input's old value goes with it (as
 * when the user types a new value).
 */

import type { ApiPrompt } from "./graph";

/** `[node id, input name]` of every input of a node in both prompts whose value or link differs. */
export function changedInputs(before: ApiPrompt, after: ApiPrompt): [string, string][] {
  const out: [string, string][] = [];
  for (const [id, node] of Object.entries(after)) {
    const old = before[id];
    if (!old) continue;
    const names = new Set([...Object.keys(old.inputs), ...Object.keys(node.inputs)]);
    for (const name of names) {
      if (JSON.stringify(old.inputs[name]) !== JSON.stringify(node.inputs[name])) out.push([id, name]);
    }
  }
  return out;
}

/**
 * One undo step: the document and its name (shown in the toolbar, the name Save
 * downloads), so that undoing an Open or a Clear brings the old name back with the
 * old graph, instead of saving the old graph under the new name.
 */
export function undoKey(doc: unknown, name: string): string {
  return JSON.stringify({ name, doc });
}

/** The document and name of an undo step (undoKey). */
export function readUndoKey(key: string): { doc: { prompt?: ApiPrompt } & Record<string, unknown>; name: string } {
  const { doc, name } = JSON.parse(key);
  return { doc, name: typeof name === "string" ? name : "workflow" };
}

/** The undo history: the steps before, the one shown (null until the first graph is in), the steps undone. */
export type UndoHistory = { past: string[]; present: string | null; future: string[] };

/**
 * Make `key` the present step. The one before becomes a step to undo to (the oldest beyond
 * `max` dropped) and the steps undone are gone, unless `amend` (the canvas's own room-making
 * move: it changes the present step instead of adding one) or nothing was shown before.
 * Returns whether anything changed.
 */
export function recordStep(h: UndoHistory, key: string, amend = false, max = 200): boolean {
  if (key === h.present) return false;
  if (h.present !== null && !amend) {
    h.past.push(h.present);
    if (h.past.length > max) h.past.shift();
    h.future = [];
  }
  h.present = key;
  return true;
}
