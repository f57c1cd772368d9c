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

/**
 * The steps shown with the same opened graph as the present one: back to the step that
 * opened it (a file, an example, a Clear: one of `opened`), forward to the step before the
 * next such one.
 */
export function segmentOf(h: UndoHistory, opened: ReadonlySet<string>): string[] {
  if (h.present === null) return [];
  const out = [h.present];
  if (!opened.has(h.present)) {
    for (let i = h.past.length - 1; i >= 0; i--) {
      out.push(h.past[i]);
      if (opened.has(h.past[i])) break;
    }
  }
  for (let i = h.future.length - 1; i >= 0 && !opened.has(h.future[i]); i--) out.push(h.future[i]); // future: last is next
  return out;
}

/**
 * The workflow-library file (lib/library.ts) of each undo step: the file the graph came
 * from or was saved as, which Save writes over without asking and the Workflows tab marks
 * "open". It follows the graph: an undo across an Open brings back the file of the graph
 * before (or none), a redo the opened one.
 */
export class StepFiles {
  private of = new Map<string, string | null>();
  /** The file of the graph shown now (null: none). */
  current: string | null = null;

  /** `key` became the present step, with the file `path` (an opened graph's), else the current one (an edit). */
  recorded(key: string, path: string | null = this.current): void {
    this.current = path;
    this.of.set(key, path);
  }

  /** An undo or redo showed `key`: its file is the current one again. Whether the current one changed. */
  shown(key: string): boolean {
    if (!this.of.has(key)) return false;
    const path = this.of.get(key) ?? null;
    if (path === this.current) return false;
    this.current = path;
    return true;
  }

  /** The graph shown was saved as `path` (or its file deleted: null): so were the steps of its segment (`segmentOf`). */
  set(path: string | null, segment: readonly string[]): void {
    this.current = path;
    for (const key of segment) this.of.set(key, path);
  }

  /** The file `from` was renamed to `to` (or deleted: null): every step of it follows. */
  moved(from: string, to: string | null): void {
    if (this.current === from) this.current = to;
    for (const [key, path] of this.of) if (path === from) this.of.set(key, to);
  }

  /** Forget the steps no longer in the history. */
  prune(h: UndoHistory): void {
    if (this.of.size <= h.past.length + h.future.length + 8) return;
    const kept = new Set([...h.past, ...h.future, h.present]);
    for (const key of this.of.keys()) if (!kept.has(key)) this.of.delete(key);
  }
}
