/**
 * Checking a number widget's value against its input's schema. A value the user
 * typed is kept as typed (never clamped or rounded behind their back): a bad one
 * is marked on the widget, and the server refuses the prompt with the same reason.
 */

import type { InputDef } from "./schema";

/** The number `text` means, or null when it is not one ("", "abc", "1e"). */
export function parseNumberText(text: string): number | null {
  const t = text.trim();
  if (t === "") return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : null;
}

/** What is wrong with `value` for a number input, or null when it will run as shown. */
export function numberIssue(input: InputDef, value: unknown): string | null {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    const shown = value == null ? "" : String(value).trim();
    return shown === "" ? "empty: enter a number" : `“${shown}” is not a number`;
  }
  if (input.type === "INT" && !Number.isInteger(value)) return `${value} is not a whole number`;
  const { min, max } = input.options;
  if (typeof min === "number" && value < min) return `${value} is below the minimum ${min}`;
  if (typeof max === "number" && value > max) return `${value} is above the maximum ${max}`;
  return null;
}

/** `value` moved by one step (arrow keys), kept inside the input's range. */
export function stepValue(input: InputDef, value: number, dir: 1 | -1): number {
  const step = typeof input.options.step === "number" && input.options.step > 0 ? input.options.step : 1;
  let v = value + dir * step;
  if (input.type !== "INT") v = Number(v.toFixed(10)); // 0.1 + 0.2 without the float noise
  const { min, max } = input.options;
  if (typeof min === "number" && v < min) v = min;
  if (typeof max === "number" && v > max) v = max;
  return v;
}
