/** Plain helpers for the examples browser and the model cards (no React, testable alone). */

import type { ModelCard } from "../api";

/** Every word of the query is in the example's title, description or file name. */
export function matchesQuery(ex: { name: string; title: string; description: string }, query: string): boolean {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return true;
  const text = `${ex.title} ${ex.description} ${ex.name}`.toLowerCase();
  return words.every((w) => text.includes(w));
}

/** "64×64" from a card's native size, or null. */
export function nativeSizeText(card: ModelCard | undefined): string | null {
  const s = card?.native_size;
  if (!Array.isArray(s) || s.length !== 2 || !s.every((v) => typeof v === "number" && v > 0)) return null;
  return `${s[0]}×${s[1]}`;
}
