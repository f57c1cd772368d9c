/**
 * Reading the server's /history for the canvas: each entry's time, duration and
 * prompt excerpt, and which past outputs belong on the nodes of the open graph
 * (so results survive a reload, a second tab, or a fully cached re-queue).
 */

import { type Graph, graphToDocument } from "./graph";
import type { ImageRef } from "./runstore";
import type { Defs } from "./schema";

export type HistoryOutput = { images?: ImageRef[]; text?: unknown[] };

/** A finished prompt's outputs by node id: History's Load puts them back on the loaded nodes. */
export type RanOutputs = { promptId: string; outputs: Record<string, HistoryOutput> };

/** What lib/history needs of an entry (api.ts's HistoryEntry has it). */
export type HistoryLike = {
  promptId: string;
  prompt?: unknown;
  /** The prompt's extra_data (Steerflow's queue puts the editor's document in extra_pnginfo.workflow). */
  extra?: Record<string, unknown>;
  outputs: Record<string, HistoryOutput>;
  messages: unknown[];
  status: string;
};

/** When the prompt started and how long it ran (ms), from its recorded events' timestamps. */
export function timing(messages: unknown[]): { start?: number; durationMs?: number } {
  let start: number | undefined;
  let end: number | undefined;
  for (const m of messages) {
    if (!Array.isArray(m) || typeof m[0] !== "string") continue;
    const ts = (m[1] as { timestamp?: unknown } | undefined)?.timestamp;
    if (typeof ts !== "number" || !Number.isFinite(ts)) continue;
    if (m[0] === "execution_start") start = ts;
    else if (m[0] === "execution_success" || m[0] === "execution_error" || m[0] === "execution_interrupted") end = ts;
  }
  return { start, durationMs: start !== undefined && end !== undefined && end >= start ? end - start : undefined };
}

/** "12.3 s", "2 min 5 s", "340 ms". */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** The prompt's text, shortened: the first non-empty text / prompt input of its nodes. */
export function promptExcerpt(prompt: unknown, max = 80): string {
  if (!prompt || typeof prompt !== "object") return "";
  const nodes = Object.entries(prompt as Record<string, { inputs?: Record<string, unknown> }>)
    .sort(([a], [b]) => Number(a) - Number(b) || a.localeCompare(b));
  for (const [, node] of nodes) {
    for (const [name, value] of Object.entries(node?.inputs ?? {})) {
      if (typeof value === "string" && /text|prompt/i.test(name) && value.trim()) {
        const t = value.trim().replace(/\s+/g, " ");
        return t.length > max ? `${t.slice(0, max - 1)}…` : t;
      }
    }
  }
  return "";
}

/** The seeds a prompt ran with (its `seed` / `noise_seed` values, each once, in node order), to tell runs apart. */
export function promptSeeds(prompt: unknown): string[] {
  if (!prompt || typeof prompt !== "object") return [];
  const seeds: string[] = [];
  const nodes = Object.entries(prompt as Record<string, { inputs?: Record<string, unknown> }>)
    .sort(([a], [b]) => Number(a) - Number(b) || a.localeCompare(b));
  for (const [, node] of nodes) {
    for (const [name, value] of Object.entries(node?.inputs ?? {})) {
      if ((name === "seed" || name === "noise_seed") && (typeof value === "number" || typeof value === "string"
        || typeof value === "bigint") && !seeds.includes(String(value))) seeds.push(String(value));
    }
  }
  return seeds;
}

function classOf(prompt: unknown, node: string): string | undefined {
  const n = (prompt as Record<string, { class_type?: unknown }> | undefined)?.[node];
  return typeof n?.class_type === "string" ? n.class_type : undefined;
}

/**
 * The open graph, as a prompt (its document's: inputs linked to their real sources), to tell
 * its outputs from those of other graphs with nodes of the same id and type (ids start at 1
 * again after a Clear). `volatile`: "node.input" values that change after each run by
 * themselves (a seed with control_after_generate), left out of the comparison.
 */
export type GraphPrompt = { prompt: Record<string, unknown>; volatile?: ReadonlySet<string> };

/** The open graph's prompt for `outputsForGraph`: its seeds that change after each run are volatile. */
export function graphPromptOf(graph: Graph, defs: Defs): GraphPrompt {
  const volatile = new Set<string>();
  for (const n of graph.nodes) {
    for (const [input, mode] of Object.entries(n.control ?? {})) if (mode !== "fixed") volatile.add(`${n.id}.${input}`);
  }
  return { prompt: graphToDocument(graph, defs).prompt, volatile };
}

/** A value as text for comparing: 64-bit seeds come as a number from one side and a string or bigint from the other. */
function valueText(v: unknown): string {
  if (typeof v === "number" || typeof v === "bigint") return `#${String(v)}`;
  if (typeof v === "string") return /^-?\d+$/.test(v) ? `#${v}` : JSON.stringify(v);
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? String(x) : x)) ?? "null";
}

function isLinkValue(v: unknown): v is [string | number, number] {
  return Array.isArray(v) && v.length === 2 && (typeof v[0] === "string" || typeof v[0] === "number") && typeof v[1] === "number";
}

/**
 * What node `id` of `prompt` computes: its type, its values and, through its links, what each
 * upstream node computes (node ids left out). Equal for two prompts when that node would
 * make the same output in both, but for the `volatile` values.
 */
export function upstreamSignature(prompt: unknown, id: string, volatile?: ReadonlySet<string>): string {
  const p = (prompt ?? {}) as Record<string, { class_type?: unknown; inputs?: Record<string, unknown> } | undefined>;
  const memo = new Map<string, string>();
  const sig = (node: string, path: Set<string>): string => {
    const known = memo.get(node);
    if (known !== undefined) return known;
    const n = p[node];
    if (!n || path.has(node)) return "?";
    path.add(node);
    const parts = Object.keys(n.inputs ?? {}).sort().flatMap((name) => {
      const v = n.inputs![name];
      if (isLinkValue(v)) return [`${name}<${sig(String(v[0]), path)}.${v[1]}`];
      return volatile?.has(`${node}.${name}`) ? [] : [`${name}=${valueText(v)}`];
    });
    path.delete(node);
    const out = `${String(n.class_type)}(${parts.join(",")})`;
    memo.set(node, out);
    return out;
  };
  return sig(id, new Set());
}

/** The prompt an entry ran as the editor had it (before `{a|b}` picks), else the prompt the server ran. */
function editorPrompt(e: HistoryLike): unknown {
  const doc = (e.extra?.extra_pnginfo as { workflow?: { prompt?: unknown } } | undefined)?.workflow;
  return doc?.prompt && typeof doc.prompt === "object" ? doc.prompt : e.prompt;
}

/**
 * For each node of the open graph, its newest past output: from the newest entry
 * whose prompt had a node of the same id and type with an output and, given the open
 * `graph`'s prompt, the same upstream (lib/history's upstreamSignature: the same values and
 * links up to it), so that an output of another graph is never shown on it. `entries`
 * newest first. Returns them oldest first, so replaying them leaves the newest on top.
 */
export function outputsForGraph(entries: readonly HistoryLike[], nodes: readonly { id: string; type: string }[],
  graph?: GraphPrompt): { node: string; output: HistoryOutput; promptId: string }[] {
  const out: { node: string; output: HistoryOutput; promptId: string; rank: number }[] = [];
  for (const { id, type } of nodes) {
    const want = graph ? upstreamSignature(graph.prompt, id, graph.volatile) : null;
    const rank = entries.findIndex((e) => {
      const o = e.outputs?.[id];
      if (!o || !(o.images?.length || o.text?.length) || classOf(e.prompt, id) !== type) return false;
      return want === null || upstreamSignature(editorPrompt(e), id, graph?.volatile) === want;
    });
    if (rank >= 0) out.push({ node: id, output: entries[rank].outputs[id], promptId: entries[rank].promptId, rank });
  }
  return out.sort((a, b) => b.rank - a.rank).map(({ rank: _r, ...rest }) => rest);
}

/** A finished prompt's outputs (History's Load) for the nodes of its graph that are on the canvas. */
export function ranOutputs(ran: RanOutputs, nodes: readonly { id: string }[]
): { node: string; output: HistoryOutput; promptId: string }[] {
  const here = new Set(nodes.map((n) => n.id));
  return Object.entries(ran.outputs)
    .filter(([node, o]) => here.has(node) && (o.images?.length || o.text?.length))
    .map(([node, output]) => ({ node, output, promptId: ran.promptId }));
}

export type HistoryEntry = {
  promptId: string;
  number: number;
  prompt?: unknown;
  extra?: Record<string, unknown>;
  outputs: Record<string, HistoryOutput>;
  status: string;
  messages: unknown[];
  /** Why it failed or was stopped, when the server said (the error, or the interrupt's note). */
  reason?: string;
  /** Its nodes' warnings ("node 3: …"), kept by the server in `status.steerflow_warnings`. */
  warnings: string[];
};

/** The failure's message or the interrupt's note in a history entry's status messages. */
function endReason(messages: unknown[]): string | undefined {
  for (const m of [...messages].reverse()) {
    if (!Array.isArray(m) || typeof m[1] !== "object" || m[1] === null) continue;
    const d = m[1] as Record<string, unknown>;
    if (m[0] === "execution_error" && d.exception_type !== "ExecutionBlocked") {
      const where = d.node_id == null ? "" : `${String(d.node_type ?? "node")} #${String(d.node_id)}: `;
      return `${where}${String(d.exception_message ?? "execution failed")}`;
    }
    if (m[0] === "execution_interrupted" && typeof d.steerflow_note === "string") return d.steerflow_note;
  }
  return undefined;
}

function warningsOf(status: { steerflow_warnings?: unknown }): string[] {
  const list = Array.isArray(status.steerflow_warnings) ? status.steerflow_warnings : [];
  return list.flatMap((w) => {
    if (typeof w !== "object" || w === null) return [];
    const { node, message } = w as { node?: unknown; message?: unknown };
    return [`${node == null ? "" : `node ${String(node)}: `}${String(message ?? "")}`];
  });
}

/** Why it ran again (a worker's crash, a server restart): the server's `steerflow_retry` messages. */
function rerunsOf(messages: unknown[]): string[] {
  return messages.flatMap((m) => {
    if (!Array.isArray(m) || m[0] !== "steerflow_retry" || typeof m[1] !== "object" || m[1] === null) return [];
    const message = (m[1] as { message?: unknown }).message;
    return typeof message === "string" && message ? [`ran again: ${message}`] : [];
  });
}

/** ComfyUI's /history body as entries, newest first. */
export function parseHistory(h: Record<string, Record<string, unknown>> | null | undefined): HistoryEntry[] {
  const out: HistoryEntry[] = [];
  for (const [id, entry] of Object.entries(h ?? {})) {
    if (typeof entry !== "object" || entry === null) continue;
    const p = entry.prompt;
    const arr = Array.isArray(p) ? p : [];
    const status = (entry.status ?? {}) as { status_str?: string; completed?: boolean; messages?: unknown[]; steerflow_warnings?: unknown };
    const messages = Array.isArray(status.messages) ? status.messages : [];
    const events = messages.map((m) => (Array.isArray(m) ? m[0] : undefined));
    const interrupted = events.includes("execution_interrupted");
    out.push({
      promptId: id,
      number: Number(arr[0] ?? 0),
      prompt: arr[2],
      extra: arr[3] as Record<string, unknown>,
      outputs: (entry.outputs ?? {}) as HistoryEntry["outputs"],
      status: interrupted ? "interrupted" : status.status_str ?? (status.completed ? "success" : "unknown"),
      messages,
      reason: endReason(messages),
      warnings: [...rerunsOf(messages), ...warningsOf(status)],
    });
  }
  return out.sort((a, b) => b.number - a.number);
}
