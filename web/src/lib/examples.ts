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

/**
 * The models an example needs (`requires_models` of `/workflows?details=1`), as the card
 * lists them: a list of names, or names by model folder (`{"checkpoints": ["a.safetensors"]}`),
 * written "checkpoints/a.safetensors" (where under models/ it goes).
 */
export function requiredModels(value: unknown): string[] {
  if (Array.isArray(value)) return value.filter((v) => v != null && v !== "").map(String);
  if (!value || typeof value !== "object") return typeof value === "string" && value ? [value] : [];
  return Object.entries(value as Record<string, unknown>).flatMap(([folder, names]) => {
    const list = Array.isArray(names) ? names : names != null && names !== "" ? [names] : [];
    return list.filter((n) => n != null && n !== "").map((n) => `${folder}/${String(n)}`);
  });
}

/** The first example a newcomer wants (text to image) first, the others by title. */
export function byTitle<T extends { name: string; title: string }>(examples: readonly T[]): T[] {
  const first = (ex: T) => (ex.name === "txt2img.json" ? 0 : 1);
  return [...examples].sort((a, b) => first(a) - first(b) || a.title.localeCompare(b.title));
}
