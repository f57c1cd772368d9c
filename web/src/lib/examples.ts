/** Plain helpers for the examples browser and the model cards (no React, testable alone). */

import type { ModelCard } from "../api";
import { clampNumber, type NodeDef } from "./schema";

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
 * A new node that makes a latent of a chosen size (width and height widgets, a LATENT
 * output, no LATENT input) at the native size of the model the graph picks, so a newcomer's first Empty
 * Latent Image fits steerflow-shapes (64x64) instead of ComfyUI's 512. Only where every
 * picked model with a card agrees on one size; else null (the defaults stay).
 */
export function nativeSizeValues(def: NodeDef | undefined, cards: readonly (ModelCard | undefined)[]
): { width: number; height: number } | null {
  // it makes a latent, not resizes one (Upscale Latent's width and height are a target)
  if (!def?.outputs.some((o) => o.type === "LATENT") || def.inputs.some((i) => i.type === "LATENT")) return null;
  const width = def.inputs.find((i) => i.name === "width" && i.widget && i.type === "INT");
  const height = def.inputs.find((i) => i.name === "height" && i.widget && i.type === "INT");
  if (!width || !height) return null;
  const sizes = new Set(cards.map((c) => nativeSizeText(c)).filter((t): t is string => t !== null));
  if (sizes.size !== 1) return null;
  const [w, h] = cards.find((c) => nativeSizeText(c))!.native_size!;
  return { width: clampNumber(width, w), height: clampNumber(height, h) };
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
