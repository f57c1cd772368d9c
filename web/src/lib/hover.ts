/** Telling a real pointer move from the browser's own hover updates. */

export type Point = { x: number; y: number };

/**
 * Whether the pointer really moved since `last` (null: no position known yet). A list that
 * appears or scrolls under a still pointer gets mouseenter and mousemove events too
 * (Chromium re-checks the hover after each layout), at the same position: those must not
 * move a keyboard selection to the row under the pointer.
 */
export function pointerMoved(last: Point | null, x: number, y: number): boolean {
  return last !== null && (last.x !== x || last.y !== y);
}
