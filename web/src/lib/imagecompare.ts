/**
 * ComfyUI's `IMAGECOMPARE` widget (Image Compare's `compare_view`): after a run, the node's two
 * image sets under one slider. The node's UI output is `{a_images, b_images}` (the server adds
 * `images`, both sets, for the gallery); the widget shows the first of each, A left of the
 * slider and B right of it. The widget holds no value of its own: nothing is saved or sent.
 */

import type { ImageRef } from "./runstore";

export type ComparePair = { a: ImageRef[]; b: ImageRef[] };

function refs(v: unknown): ImageRef[] | null {
  if (!Array.isArray(v)) return null;
  return v.filter((x): x is ImageRef => !!x && typeof x === "object" && typeof (x as ImageRef).filename === "string");
}

/** The two sets of an Image Compare's output, or undefined when the output has neither. */
export function comparePair(output: Readonly<Record<string, unknown>>): ComparePair | undefined {
  const a = refs(output.a_images);
  const b = refs(output.b_images);
  if (!a && !b) return undefined;
  return { a: a ?? [], b: b ?? [] };
}

/** The slider's position (percent from the left) for a pointer at `clientX` over a box. */
export function sliderPercent(clientX: number, left: number, width: number): number {
  if (!(width > 0)) return 50;
  return Math.min(100, Math.max(0, ((clientX - left) / width) * 100));
}
