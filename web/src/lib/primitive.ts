/**
 * ComfyUI's primitive habit: a primitive node (Int, Float, String, Boolean) linked for the
 * first time into a widget input takes that widget's current value, so linking an Int into a
 * seed of 42 keeps 42 (it did not: the prompt silently got the Int's default 0). A number
 * widget's primitive also gets control_after_generate (fixed / increment / decrement /
 * randomize), as ComfyUI's Primitive node adds one to every number it drives: the target's
 * own mode when it had one (a seed's), else "fixed".
 */

import type { ControlMode, Defs } from "./schema";
import { numberIssue } from "./widgetcheck";

/** Node types that hold one constant `value` to feed other nodes' inputs. */
export const PRIMITIVE_TYPES: ReadonlySet<string> = new Set([
  "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean",
]);

/** The primitive holding a widget's value, by its type (STRING: by its multiline option). */
export const PRIMITIVE_FOR: Readonly<Record<string, string>> = {
  INT: "PrimitiveInt", FLOAT: "PrimitiveFloat", BOOLEAN: "PrimitiveBoolean",
};

type NodeLike = { type: string; values: Record<string, unknown>; control?: Record<string, ControlMode> };

/**
 * What `source` (a primitive) becomes when its first link goes into `target`'s widget `input`:
 * its new values and control, or null when nothing changes (not a primitive, not its first
 * link, not a widget, another type, or a value outside the primitive's bounds).
 */
export function adoptWidget(source: NodeLike, target: NodeLike, input: string, firstLink: boolean,
  defs: Defs): Pick<NodeLike, "values" | "control"> | null {
  if (!firstLink || !PRIMITIVE_TYPES.has(source.type)) return null;
  const own = defs.get(source.type)?.inputs.find((i) => i.name === "value");
  const theirs = defs.get(target.type)?.inputs.find((i) => i.name === input);
  if (!own || !theirs?.widget || !(input in target.values)) return null;
  if (own.type !== theirs.type) return null;
  const value = target.values[input];
  if (own.type === "INT" || own.type === "FLOAT") {
    // a value the primitive cannot hold (a 64-bit seed beyond its bounds) is not taken
    if (numberIssue(own, value) !== null) return null;
    const mode: ControlMode = target.control?.[input] ?? "fixed";
    return { values: { ...source.values, value }, control: { ...source.control, value: mode } };
  }
  return { values: { ...source.values, value }, control: source.control };
}
