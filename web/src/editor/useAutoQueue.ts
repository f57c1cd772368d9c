/**
 * The queue's options beside the Queue button: the batch count (how many prompts a
 * Queue adds) and "queue on change" (ComfyUI's Queue (Change)): whenever the graph
 * changes and the queue is empty, queue once. A change is a change of what would run
 * (lib/batch.ts changeSignature), settled for CHANGE_DEBOUNCE_MS; a change made while
 * prompts run is queued once when the queue empties.
 */

import { useCallback, useEffect, useRef, useState } from "react";
import { changeSignature, clampCount, countTextIssue, parseCountText } from "../lib/batch";
import { graphToDocument } from "../lib/graph";
import type { RunStore } from "../lib/runstore";
import type { GraphStore } from "./useGraphStore";

const OPTIONS_KEY = "steerflow.queueOptions";
export const CHANGE_DEBOUNCE_MS = 600;

export type QueueOptions = {
  count: number;
  setCount(n: number): void;
  /** The batch-count field's text: the count once it is a valid one (lib/batch.ts countTextIssue). */
  countText: string;
  setCountText(text: string): void;
  /** Why `countText` is no count to queue (Queue then refuses), or null. */
  countIssue: string | null;
  onChange: boolean;
  setOnChange(on: boolean): void;
};

function readOptions(): { count: number; onChange: boolean } {
  try {
    const o = JSON.parse(localStorage.getItem(OPTIONS_KEY) ?? "{}");
    return { count: clampCount(o.count ?? 1), onChange: o.onChange === true };
  } catch {
    return { count: 1, onChange: false };
  }
}

/** The batch count and the on-change toggle, kept across reloads. */
export function useQueueOptions(): QueueOptions {
  const [opts, setOpts] = useState(readOptions);
  const [countText, setText] = useState(() => String(opts.count));
  useEffect(() => {
    try {
      localStorage.setItem(OPTIONS_KEY, JSON.stringify(opts));
    } catch {
      // storage unavailable: the options last this session
    }
  }, [opts]);
  const setCount = useCallback((n: number) => {
    const count = clampCount(n);
    setOpts((o) => ({ ...o, count }));
    setText(String(count));
  }, []);
  const setCountText = useCallback((text: string) => {
    setText(text);
    const n = parseCountText(text);
    if (n !== null) setOpts((o) => ({ ...o, count: n }));
  }, []);
  return {
    count: opts.count,
    setCount,
    countText,
    setCountText,
    countIssue: countTextIssue(countText),
    onChange: opts.onChange,
    setOnChange: useCallback((on: boolean) => setOpts((o) => ({ ...o, onChange: on })), []),
  };
}

/** Queue once after each settled change of the graph while `enabled` and the queue is empty. */
export function useAutoQueue(g: GraphStore, store: RunStore, queue: () => Promise<void>, enabled: boolean): void {
  const { currentGraph, defsRef, nodes, edges } = g;
  const baseline = useRef<string | null>(null);
  const dirty = useRef(false);
  const inFlight = useRef(false);

  const signature = useCallback(() => {
    const graph = currentGraph();
    return changeSignature(graphToDocument(graph, defsRef.current).prompt, graph.nodes);
  }, [currentGraph, defsRef]);

  const tryQueue = useCallback(() => {
    if (!dirty.current || inFlight.current || !g.state.current.nodes.length) return;
    const { queueRemaining, running } = store.getGlobal();
    if (queueRemaining > 0 || running) return; // queued when the queue empties
    dirty.current = false;
    inFlight.current = true;
    baseline.current = signature();
    queue().finally(() => {
      inFlight.current = false;
    });
  }, [g.state, store, queue, signature]);

  // Turning it on takes the graph as it is: only later changes queue.
  useEffect(() => {
    dirty.current = false;
    baseline.current = enabled ? signature() : null;
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [enabled]);

  useEffect(() => {
    if (!enabled) return;
    const timer = setTimeout(() => {
      const sig = signature();
      if (sig === baseline.current) return;
      baseline.current = sig;
      dirty.current = true;
      tryQueue();
    }, CHANGE_DEBOUNCE_MS);
    return () => clearTimeout(timer);
  }, [enabled, nodes, edges, signature, tryQueue]);

  // The queue emptied: a change made while it ran is queued now.
  useEffect(() => (enabled ? store.subscribe(tryQueue) : undefined), [enabled, store, tryQueue]);
}
