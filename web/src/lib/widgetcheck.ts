/**
 * Checking a number widget's value against its input's schema. A value the user
 * typed is kept as typed (never clamped or rounded behind their back): a bad one
 * is marked on the widget, and the server refuses the prompt with the same reason.
 */

import { clampBig, formatBound, fromBigInt, toBigInt } from "./exactint";
import type { InputDef } from "./schema";

/** A decimal number as people type one: "7", "-0.5", ".5", "5.", "1e-3". */
const DECIMAL = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * The number `text` means, or null when it is not one ("", "abc", "1e"). Decimal
 * only: JavaScript's Number() would also read "0x10" as 16, "0b11" as 3 and "0o7" as 7,
 * which a user who typed them did not mean (nor does the server read them so).
 */
export function parseNumberText(text: string): number | null {
  const t = text.trim();
  if (!DECIMAL.test(t)) return null;
  const n = Number(t);
  return Number.isFinite(n) ? n : null;
}

/**
 * What a number widget's text means for its input: an INT's whole number exactly (its
 * decimal text beyond 2^53, lib/exactint.ts), else the number, or null.
 */
export function parseWidgetText(input: InputDef, text: string): number | string | null {
  if (input.type === "INT") {
    const b = toBigInt(text);
    if (b !== null) return fromBigInt(b);
  }
  return parseNumberText(text);
}

/** What is wrong with `value` for a number input, or null when it will run as shown. */
export function numberIssue(input: InputDef, value: unknown): string | null {
  const exact = input.type === "INT" ? toBigInt(value) : null;
  if (exact !== null) {
    const b = clampBig(input, exact);
    if (b > exact) return `${exact} is below the minimum ${formatBound(input, "min")}`;
    if (b < exact) return `${exact} is above the maximum ${formatBound(input, "max")}`;
    return stepIssue(input, exact);
  }
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

/**
 * An INT off its step, as the server refuses it: `step` > 1 counts from `min` (else 0),
 * when both are whole (engine/validation.py's `_int_issue`).
 */
function stepIssue(input: InputDef, value: bigint): string | null {
  const { step, min } = input.options;
  const base = typeof min === "number" ? min : 0;
  if (typeof step !== "number" || step <= 1 || !Number.isInteger(step) || !Number.isSafeInteger(base)) return null;
  const s = BigInt(step);
  const b = BigInt(base);
  const off = (((value - b) % s) + s) % s;
  if (off === 0n) return null;
  const grid = base ? `${base} + k*${step}` : `a multiple of ${step}`;
  return `${value} is not ${grid} (nearest: ${value - off} or ${value - off + s})`;
}

function stepOf(input: InputDef): number {
  return typeof input.options.step === "number" && input.options.step > 0 ? input.options.step : 1;
}

/** `value` moved by one step (arrow keys), kept inside the input's range. */
/**
 * A number widget's text: the value whole ("7.456789", "5e-7", an INT beyond 2^53 as its
 * exact text). What the field shows is what runs: it showed a FLOAT to its step's decimals,
 * so a learning rate of 5e-7 read "0", and a click in and out of the field set it to 0.
 */
export function numberText(v: unknown): string {
  return v == null ? "" : String(v);
}

export function stepValue(input: InputDef, value: number | string, dir: 1 | -1): number | string {
  return moveValue(input, value, dir);
}

/**
 * `value` moved by `steps` steps (arrow keys, a drag), kept inside the input's range: an
 * INT exactly (64-bit seeds too), a FLOAT without float noise. A value that is not a
 * number yet (typed text) moves from the input's default, or 0.
 */
export function moveValue(input: InputDef, value: number | string, steps: number): number | string {
  const step = stepOf(input);
  if (input.type === "INT") {
    const start = toBigInt(value) ?? toBigInt(input.options.default) ?? 0n;
    const d = BigInt(Math.round(steps)) * BigInt(Math.max(1, Math.round(step)));
    return fromBigInt(clampBig(input, start + d));
  }
  const start = typeof value === "number" && Number.isFinite(value) ? value
    : typeof input.options.default === "number" ? input.options.default : 0;
  let v = Number((start + Math.round(steps) * step).toFixed(10)); // 0.1 + 0.2 without the float noise
  const { min, max } = input.options;
  if (typeof min === "number" && v < min) v = min;
  if (typeof max === "number" && v > max) v = max;
  return v;
}

/** Pixels of horizontal drag per step on a number widget (ComfyUI moves one step per pixel). */
export const DRAG_PX_PER_STEP = 1;
/** A press that moves less than this is a click: it puts the caret in the field for typing. */
export const DRAG_THRESHOLD_PX = 3;

/** The value after dragging `dx` pixels from `start` (one step per DRAG_PX_PER_STEP, clamped). */
export function dragValue(input: InputDef, start: number | string, dx: number): number | string {
  const beyond = Math.max(0, Math.abs(dx) - DRAG_THRESHOLD_PX) * Math.sign(dx);
  return moveValue(input, start, Math.trunc(beyond / DRAG_PX_PER_STEP));
}
