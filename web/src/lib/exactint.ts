/**
 * Integers beyond 2^53 without float corruption. Seeds are 64-bit (`max` 2^64-1); a JS
 * number holds only 53 bits exactly, so JSON.parse reads 18446744073709551615 as
 * 18446744073709552000 and a prompt carrying that is refused by the server (it is above
 * the maximum). The server reads JSON integers exactly and also accepts an INT given as
 * a decimal string.
 *
 * The canvas keeps an INT widget's value as a number while it is a safe integer and as
 * its decimal string beyond that (so every JSON.stringify — autosave, undo, Save — stays
 * exact), and sends it as a JSON number: `exactPrompt` + `stringifyJsonExact`.
 */

import type { ApiPrompt } from "./graph";
import type { Defs, InputDef } from "./schema";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const INT_TEXT = /^[+-]?\d+$/;
/** Marks an exact integer inside a JSON string while (de)serialising; NUL never appears in real names. */
const MARK = "\u0000exactint:";
const MARKED = /"\\u0000exactint:(-?\d+)"/g;
/** An integer literal (no fraction, no exponent). */
const INT_LITERAL = /^-?\d+$/;

/** The exact integer `v` holds (a whole number, an integer's decimal text, a bigint), else null. */
export function toBigInt(v: unknown): bigint | null {
  if (typeof v === "bigint") return v;
  if (typeof v === "number") return Number.isInteger(v) ? BigInt(v) : null;
  if (typeof v === "string" && INT_TEXT.test(v.trim())) return BigInt(v.trim());
  return null;
}

/** How the canvas stores an integer: a number when safe, its decimal text beyond 2^53. */
export function fromBigInt(b: bigint): number | string {
  return b >= -MAX_SAFE && b <= MAX_SAFE ? Number(b) : b.toString();
}

/** An INT input's bounds, exactly (the schema's 64-bit bounds survive parsing as `exactMin`/`exactMax`). */
export function intBounds(input: InputDef): { min: bigint | null; max: bigint | null } {
  const { min, max } = input.options;
  return {
    min: input.exactMin ?? (typeof min === "number" && Number.isFinite(min) ? BigInt(Math.ceil(min)) : null),
    max: input.exactMax ?? (typeof max === "number" && Number.isFinite(max) ? BigInt(Math.floor(max)) : null),
  };
}

/** `b` kept inside the input's bounds. */
export function clampBig(input: InputDef, b: bigint): bigint {
  const { min, max } = intBounds(input);
  if (min !== null && b < min) return min;
  if (max !== null && b > max) return max;
  return b;
}

/** A bound as the user should read it: exact for INT inputs. */
export function formatBound(input: InputDef, which: "min" | "max"): string | null {
  if (input.type === "INT") {
    const b = intBounds(input)[which];
    if (b !== null) return b.toString();
  }
  const v = input.options[which];
  return typeof v === "number" ? String(v) : null;
}

/**
 * JSON.parse, but an integer literal beyond 2^53 becomes a bigint (`"bigint"`) or its
 * decimal text (`"string"`) instead of the nearest double.
 */
export function parseJsonExact(text: string, as: "bigint" | "string" = "bigint"): unknown {
  const marked = markBigInts(text);
  if (marked === null) return JSON.parse(text);
  return JSON.parse(marked, (_k, v: unknown) => {
    if (typeof v !== "string" || !v.startsWith(MARK)) return v;
    const digits = v.slice(MARK.length);
    return as === "bigint" ? BigInt(digits) : digits;
  });
}

const isNumberChar = (c: number) => (c >= 48 && c <= 57) || c === 45 || c === 43 || c === 46 || c === 69 || c === 101;

/**
 * `text` with each integer literal beyond 2^53 written as a marked string, or null when it
 * has none. A plain scan, not a regular expression: strings are skipped whole (digits inside
 * them are never touched) by indexOf, so a string of megabytes (an embedded image's base64)
 * neither overflows the stack (a regex's `(?:[^"\\]|\\.)*` did, around 8 MB) nor is slow.
 * Malformed JSON is left as it is, for JSON.parse to refuse.
 */
function markBigInts(text: string): string | null {
  const n = text.length;
  let parts: string[] | null = null;
  let last = 0;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 34) { // a string: to its closing quote, one preceded by an even number of backslashes
      let from = i + 1;
      for (;;) {
        const q = text.indexOf("\"", from);
        if (q < 0) return null; // unterminated: JSON.parse refuses the text itself
        let b = q - 1;
        while (b >= from && text.charCodeAt(b) === 92) b--;
        from = q + 1;
        if ((q - 1 - b) % 2 === 0) break;
      }
      i = from;
    } else if (c === 45 || (c >= 48 && c <= 57)) {
      let j = i + 1;
      while (j < n && isNumberChar(text.charCodeAt(j))) j++;
      const t = text.slice(i, j);
      if (t.length >= 16 && INT_LITERAL.test(t) && !Number.isSafeInteger(Number(t))) {
        (parts ??= []).push(text.slice(last, i), `"\\u0000exactint:${t}"`);
        last = j;
      }
      i = j;
    } else i++;
  }
  if (!parts) return null;
  parts.push(text.slice(last));
  return parts.join("");
}

/** JSON.stringify that writes a bigint as its exact integer literal. */
export function stringifyJsonExact(value: unknown, space?: number): string {
  const text = JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? `${MARK}${v}` : v), space);
  return text.replace(MARKED, "$1");
}

/**
 * The prompt as the server should read it: each INT widget value held as decimal text
 * (beyond 2^53) becomes a bigint, written by `stringifyJsonExact` as a JSON number.
 */
export function exactPrompt(prompt: ApiPrompt, defs: Defs): ApiPrompt {
  const out: ApiPrompt = {};
  for (const [id, node] of Object.entries(prompt)) {
    const def = defs.get(node.class_type);
    let inputs = node.inputs;
    for (const input of def?.inputs ?? []) {
      const v = inputs[input.name];
      if (input.type !== "INT" || typeof v !== "string") continue;
      const b = toBigInt(v);
      if (b === null) continue;
      const n = fromBigInt(b);
      inputs = { ...inputs, [input.name]: typeof n === "number" ? n : b };
    }
    out[id] = inputs === node.inputs ? node : { ...node, inputs };
  }
  return out;
}
