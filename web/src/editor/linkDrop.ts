/**
 * Where a link dropped on a node (not on one of its dots) goes, as in ComfyUI: litegraph's
 * connectByType puts it into the first free input of a matching type (else the first
 * matching one, whose link it replaces), and the 1.16+ frontend puts a link dropped on a
 * widget into that widget's input. Dragged backwards from an input, it comes from the
 * node's first matching output.
 */

import { ANY_TYPE, typesMatch } from "../lib/types";
import { type InputDef, type NodeDef, visibleInputs } from "../lib/schema";

/** A view of the node's result (Image Compare's): it has no dot, nothing links to it. */
const UNLINKABLE = new Set(["IMAGECOMPARE"]);

/**
 * How well `input` suits a dropped `outType`, best first: a socket of that type, a socket
 * taking any type, a widget of that type, a widget choosing from a list (a STRING onto a
 * sampler name: rarely what the drop means).
 */
function rank(input: InputDef, outType: string): number {
  if (input.type === "COMBO" && outType !== "COMBO") return 3;
  if (input.widget) return 2;
  return input.type === ANY_TYPE && outType !== ANY_TYPE ? 1 : 0;
}

/**
 * The input of a node (`def`, its widget `values`, its `linked` inputs) that a link of type
 * `outType` dropped on it goes into: the input of the row it was dropped on (`on`: a widget
 * or a socket's label) when that takes the type, else the best free input that takes it,
 * else the best linked one; undefined when none takes it.
 */
export function dropInput(def: NodeDef, values: Readonly<Record<string, unknown>>, linked: ReadonlySet<string>,
  outType: string, on?: string): string | undefined {
  const fits = visibleInputs(def.inputs, linked, values)
    .filter((i) => !UNLINKABLE.has(i.type) && typesMatch(outType, i.type));
  if (on !== undefined && fits.some((i) => i.name === on)) return on;
  const order = (i: InputDef) => (linked.has(i.name) ? 10 : 0) + rank(i, outType);
  let best: InputDef | undefined;
  for (const i of fits) if (!best || order(i) < order(best)) best = i; // the first of the best
  return best?.name;
}

/** The output slot of `def` that feeds a link dragged from an input of type `inType` (its first matching one). */
export function dropOutput(def: NodeDef, inType: string): number | undefined {
  const exact = def.outputs.findIndex((o) => o.type !== ANY_TYPE && typesMatch(o.type, inType));
  const slot = exact >= 0 ? exact : def.outputs.findIndex((o) => typesMatch(o.type, inType));
  return slot >= 0 ? slot : undefined;
}
