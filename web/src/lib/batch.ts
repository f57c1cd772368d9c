/**
 * Queueing more than once: ComfyUI's batch count (Queue N times, the widgets set to
 * increment / randomize moving on between the prompts) and "queue on change" (what
 * counts as a change of the graph). Plain data, testable alone.
 */

import type { ApiPrompt, GraphLink, GraphNode } from "./graph";
import { toBigInt } from "./exactint";
import { type ControlMode, type Defs, type InputDef, nextControlValue } from "./schema";

/** At most this many prompts per click (a typo of 1000 must not flood the queue). */
export const QUEUE_COUNT_MAX = 100;

export function clampCount(n: unknown): number {
  const v = Math.floor(Number(n));
  return Number.isFinite(v) ? Math.min(QUEUE_COUNT_MAX, Math.max(1, v)) : 1;
}

/**
 * Why the batch-count field's text is not a count Queue can use ("" after the old count was
 * deleted, "0", "1000", "1.5"), or null when it is one. The field keeps what is typed and
 * is marked invalid meanwhile; Queue refuses to run on such a count (it neither falls back
 * to the previous count nor clamps it unseen).
 */
export function countTextIssue(text: string): string | null {
  const t = text.trim();
  const range = `a whole number from 1 to ${QUEUE_COUNT_MAX}`;
  if (!t) return `the batch count is empty: enter ${range}`;
  if (!/^\d+$/.test(t)) return `the batch count must be ${range}`;
  const n = Number(t);
  if (n < 1) return `the batch count must be at least 1`;
  if (n > QUEUE_COUNT_MAX) return `the batch count is at most ${QUEUE_COUNT_MAX}`;
  return null;
}

/** The count the batch-count field's text asks for, or null when it asks for none (countTextIssue). */
export function parseCountText(text: string): number | null {
  return countTextIssue(text) === null ? Number(text.trim()) : null;
}

/**
 * The nodes after one queued prompt: each widget whose control_after_generate is not
 * `fixed` moves on (seed + 1, a new random seed, ...), unless a link feeds that input.
 * Nodes that do not change are returned as they were (same objects).
 */
export function advanceControls(nodes: GraphNode[], links: GraphLink[], defs: Defs,
  rand: () => number = Math.random): GraphNode[] {
  const linked = new Set(links.map((l) => `${l.target}|${l.input}`));
  const fed = fedInputs(nodes, links, defs);
  return nodes.map((n) => {
    const def = defs.get(n.type);
    if (!n.control || !def) return n;
    let values = n.values;
    for (const [name, mode] of Object.entries(n.control) as [string, ControlMode][]) {
      const own = def.inputs.find((i) => i.name === name);
      // a primitive moves within what every input it feeds takes (ComfyUI's PrimitiveNode
      // takes its widget's range): steps stays 1..10000, not a seed's range
      const input = own && within(own, fed.get(n.id) ?? []);
      const v = values[name];
      // a number, or (an INT beyond 2^53) its exact decimal text
      const moves = typeof v === "number" || (input?.type === "INT" && toBigInt(v) !== null);
      if (mode === "fixed" || !input || !moves || linked.has(`${n.id}|${name}`)) continue;
      const nv = nextControlValue(input, v as number | string, mode, rand);
      if (nv !== v) values = { ...values, [name]: nv };
    }
    return values === n.values ? n : { ...n, values };
  });
}

/** The inputs each node's outputs feed, by source node id. */
function fedInputs(nodes: GraphNode[], links: GraphLink[], defs: Defs): Map<string, InputDef[]> {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const fed = new Map<string, InputDef[]>();
  for (const l of links) {
    const target = byId.get(l.target);
    const input = target && defs.get(target.type)?.inputs.find((i) => i.name === l.input);
    if (input) fed.set(l.source, [...(fed.get(l.source) ?? []), input]);
  }
  return fed;
}

/** `input` with its numeric range narrowed to what each of `targets` takes too. */
export function within(input: InputDef, targets: InputDef[]): InputDef {
  const numeric = targets.filter((t) => t.type === "INT" || t.type === "FLOAT");
  if (!numeric.length) return input;
  let { min, max } = input.options;
  let { exactMin, exactMax } = input;
  for (const t of numeric) {
    if (typeof t.options.min === "number" && (typeof min !== "number" || t.options.min > min)) {
      min = t.options.min;
      exactMin = t.exactMin;
    }
    if (typeof t.options.max === "number" && (typeof max !== "number" || t.options.max < max)) {
      max = t.options.max;
      exactMax = t.exactMax;
    }
  }
  return { ...input, options: { ...input.options, min, max }, exactMin, exactMax };
}

/**
 * What "queue on change" compares: the prompt that would run, without the inputs that
 * control_after_generate moves (queueing changes those itself; counting them would
 * queue forever). Moving or selecting nodes changes nothing here.
 */
export function changeSignature(prompt: ApiPrompt, nodes: Pick<GraphNode, "id" | "control">[]): string {
  const moving = new Map(nodes.map((n) => [n.id, Object.entries(n.control ?? {})
    .filter(([, mode]) => mode !== "fixed").map(([name]) => name)]));
  const ids = Object.keys(prompt).sort();
  return JSON.stringify(ids.map((id) => {
    const { class_type, inputs, mode } = prompt[id];
    const skip = new Set(moving.get(id) ?? []);
    const kept = Object.keys(inputs).sort().filter((k) => !skip.has(k)).map((k) => [k, inputs[k]]);
    return [id, class_type, mode ?? null, kept];
  }));
}

/** "4.2 s", "1 min 05 s": a queue item's elapsed time. */
export function formatElapsed(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
}
