/** Palette search: every word of the query must appear in the name, type id or category. */

import type { Defs, NodeDef } from "./schema";

function matches(def: NodeDef, tokens: string[]): boolean {
  const hay = `${def.displayName} ${def.type} ${def.category}`.toLowerCase();
  return tokens.every((t) => hay.includes(t));
}

function score(def: NodeDef, q: string): number {
  const name = def.displayName.toLowerCase();
  if (name === q || def.type.toLowerCase() === q) return 0;
  if (name.startsWith(q) || def.type.toLowerCase().startsWith(q)) return 1;
  if (name.includes(q)) return 2;
  return 3;
}

export function searchDefs(defs: Defs, query: string, only?: Set<string>): NodeDef[] {
  const q = query.trim().toLowerCase();
  const tokens = q.split(/\s+/).filter(Boolean);
  const list = [...defs.values()].filter((d) => !d.deprecated && (!only || only.has(d.type)) && matches(d, tokens));
  return list.sort((a, b) =>
    (q ? score(a, q) - score(b, q) : 0) || a.category.localeCompare(b.category) || a.displayName.localeCompare(b.displayName));
}
