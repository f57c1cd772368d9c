/**
 * Queueing one prompt after another. A Queue press (button, Ctrl+Enter, Ctrl+Shift+Enter,
 * queue on change) made while an earlier one is still posting waits for it: the presses
 * run in the order they came, none is lost, and each reads the seeds the earlier one moved
 * on. The canvas (React state) shows the moved-on values only after its next render, so
 * `ControlCarry` hands them to the next press until the canvas shows them.
 */

import type { GraphNode } from "./graph";

/** Runs tasks one at a time, in the order they were given; `onBusy` says when any waits or runs. */
export class SerialRunner {
  private tail: Promise<unknown> = Promise.resolve();
  private count = 0;

  constructor(private onBusy: (busy: boolean) => void = () => undefined) {}

  /** How many tasks are running or waiting. */
  get size(): number {
    return this.count;
  }

  run<T>(task: () => Promise<T>): Promise<T> {
    if (this.count++ === 0) this.onBusy(true);
    const done = () => {
      if (--this.count === 0) this.onBusy(false);
    };
    const result = this.tail.then(task);
    this.tail = result.then(done, done);
    return result;
  }
}

/** `after`: the newest moved-on value; `stale`: values the canvas may still show instead (from before it, or written earlier). */
type Carried = { stale: unknown[]; after: unknown };
/** Enough for any run of presses the canvas has not rendered yet. */
const STALE_MAX = 1000;

/**
 * The control_after_generate values a queue call moved on, for the next call: where the
 * canvas still shows the value from before the move, or one an earlier call wrote (not
 * rendered yet), the newest moved-on one is used; a value the user changed meanwhile (or
 * the canvas showing the newest value) is taken as it is.
 */
export class ControlCarry {
  private carried = new Map<string, Map<string, Carried>>();

  /** A call went from `before` (what it read) to `after` (after its last advance). */
  record(before: readonly GraphNode[], after: readonly GraphNode[]): void {
    const was = new Map(before.map((n) => [n.id, n]));
    for (const n of after) {
      const old = was.get(n.id);
      if (!old || !n.control) continue;
      for (const [name, mode] of Object.entries(n.control)) {
        if (mode === "fixed" || Object.is(old.values[name], n.values[name])) continue;
        const entry = this.carried.get(n.id) ?? new Map<string, Carried>();
        // values carried from earlier calls still not on the canvas: it may show any of them
        const prev = entry.get(name);
        const stale = prev && Object.is(prev.after, old.values[name]) ? [...prev.stale, prev.after] : [old.values[name]];
        entry.set(name, { stale: stale.slice(-STALE_MAX), after: n.values[name] });
        this.carried.set(n.id, entry);
      }
    }
  }

  /**
   * `values` (what the canvas shows for node `id`) with the newest carried value for each
   * moving widget that still shows a value from before it; the others as they are (a value
   * the user typed meanwhile stays). Changes nothing here: safe in a React state updater.
   */
  merge(id: string, values: Readonly<Record<string, unknown>>,
    control: Readonly<Record<string, string>> | undefined): Record<string, unknown> {
    const entry = this.carried.get(id);
    if (!entry || !control) return values as Record<string, unknown>;
    let out = values as Record<string, unknown>;
    for (const [name, { stale, after }] of entry) {
      const mode = control[name];
      const now = values[name];
      if (mode && mode !== "fixed" && !Object.is(now, after) && stale.some((v) => Object.is(v, now))) {
        out = { ...out, [name]: after };
      }
    }
    return out;
  }

  /** The canvas's nodes with the newest carried values where it does not show them yet. */
  apply(nodes: GraphNode[]): GraphNode[] {
    if (!this.carried.size) return nodes;
    return nodes.map((n) => {
      if (!this.carried.has(n.id)) return n;
      const values = this.merge(n.id, n.values, n.control);
      this.prune(n.id, n.values, values);
      return values === n.values ? n : { ...n, values };
    });
  }

  /**
   * The canvas rendered `nodes`: what it shows now is what the user sees, so each carried
   * value it shows (or that the user changed, or that no longer moves) is done with, and a
   * carried node no longer on the canvas goes. Only a value still showing one from before
   * its move (the render before the moved-on value's) keeps its carry. Without this, a carry
   * lasted until the next queue, which then put the moved-on seed over one the canvas showed
   * again (typed back, or the same workflow opened again).
   */
  settle(nodes: readonly { id: string; values: Readonly<Record<string, unknown>>; control?: Readonly<Record<string, string>> }[]): void {
    if (!this.carried.size) return;
    const shown = new Map(nodes.map((n) => [n.id, n]));
    for (const id of [...this.carried.keys()]) {
      const n = shown.get(id);
      if (!n) this.carried.delete(id);
      else this.prune(id, n.values, this.merge(id, n.values, n.control));
    }
  }

  /** Forget every carried value: another graph was opened (any load path, undo and redo included). */
  clear(): void {
    this.carried.clear();
  }

  /** Whether any value is carried (tests, debugging). */
  get size(): number {
    return this.carried.size;
  }

  /** Drop the entries of node `id` that `merged` (merge() of `shown`) no longer needs. */
  private prune(id: string, shown: Readonly<Record<string, unknown>>, merged: Readonly<Record<string, unknown>>): void {
    const entry = this.carried.get(id);
    if (!entry) return;
    for (const name of [...entry.keys()]) {
      // shown on the canvas, changed by the user, or no longer moving: nothing left to carry
      if (merged === shown || Object.is(merged[name], shown[name])) entry.delete(name);
    }
    if (!entry.size) this.carried.delete(id);
  }
}
