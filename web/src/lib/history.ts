/**
 * Reading the server's /history for the canvas: each entry's time, duration and
 * prompt excerpt, and which past outputs belong on the nodes of the open graph
 * (so results survive a reload, a second tab, or a fully cached re-queue).
 */

import type { ImageRef } from "./runstore";

export type HistoryOutput = { images?: ImageRef[]; text?: unknown[] };

/** What lib/history needs of an entry (api.ts's HistoryEntry has it). */
export type HistoryLike = {
  promptId: string;
  prompt?: unknown;
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

function classOf(prompt: unknown, node: string): string | undefined {
  const n = (prompt as Record<string, { class_type?: unknown }> | undefined)?.[node];
  return typeof n?.class_type === "string" ? n.class_type : undefined;
}

/**
 * For each node of the open graph, its newest past output: from the newest entry
 * whose prompt had a node of the same id and type with an output. `entries` newest
 * first. Returns them oldest first, so replaying them leaves the newest on top.
 */
export function outputsForGraph(entries: readonly HistoryLike[], nodes: readonly { id: string; type: string }[]):
  { node: string; output: HistoryOutput; promptId: string }[] {
  const out: { node: string; output: HistoryOutput; promptId: string; rank: number }[] = [];
  for (const { id, type } of nodes) {
    const rank = entries.findIndex((e) => {
      const o = e.outputs?.[id];
      return !!o && (o.images?.length || o.text?.length) && classOf(e.prompt, id) === type;
    });
    if (rank >= 0) out.push({ node: id, output: entries[rank].outputs[id], promptId: entries[rank].promptId, rank });
  }
  return out.sort((a, b) => b.rank - a.rank).map(({ rank: _r, ...rest }) => rest);
}
