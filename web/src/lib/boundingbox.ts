/**
 * ComfyUI's `BOUNDING_BOX` widget value (Crop Image's `crop_region`): `{x, y, width, height}`
 * in pixels, (x, y) the top-left corner. The canvas edits it as four number fields and, over
 * the node's input image, as a rectangle to drag: the move and resize arithmetic is here.
 *
 * Bounds are the server's (nodes/bounding_boxes.py `check_box`): x and y from 0, width and
 * height from 1, all at most 16384 (ComfyUI's MAX_RESOLUTION). What a person types is kept
 * as typed and marked when out of bounds (the server refuses it with the same reason); a drag
 * over the image always gives a box inside the image.
 */

export type Box = { x: number; y: number; width: number; height: number };
export type BoxField = keyof Box;

export const BOX_FIELDS: readonly BoxField[] = ["x", "y", "width", "height"];
/** ComfyUI's default box (and the value a key left out takes). */
export const DEFAULT_BOX: Readonly<Box> = { x: 0, y: 0, width: 512, height: 512 };
export const BOX_MAX = 16384;

export function boxMin(field: BoxField): number {
  return field === "width" || field === "height" ? 1 : 0;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The value as the widget shows it: each key as stored (a number, or the text a person typed),
 * a key left out at ComfyUI's default. Anything but an object is the default box.
 */
export function boxFields(value: unknown): Record<BoxField, number | string> {
  const src = isObject(value) ? value : {};
  const out = {} as Record<BoxField, number | string>;
  for (const f of BOX_FIELDS) {
    const v = src[f];
    out[f] = typeof v === "number" || typeof v === "string" ? v : DEFAULT_BOX[f];
  }
  return out;
}

/** What is wrong with one key's value, or null (the server's message, in words). */
export function boxFieldIssue(field: BoxField, v: unknown): string | null {
  if (typeof v !== "number" || !Number.isFinite(v)) return `${field} must be a whole number`;
  if (!Number.isInteger(v)) return `${field} must be a whole number, not ${v}`;
  const min = boxMin(field);
  if (v < min || v > BOX_MAX) return `${field} must be ${min} to ${BOX_MAX}, got ${v}`;
  return null;
}

/** Every key's issue, in field order (empty: the box will run as shown). */
export function boxIssues(value: unknown): string[] {
  const fields = boxFields(value);
  return BOX_FIELDS.map((f) => boxFieldIssue(f, fields[f])).filter((m): m is string => m !== null);
}

/** The box as numbers (a key that is not a valid number takes its default), for drawing. */
export function numericBox(value: unknown): Box {
  const fields = boxFields(value);
  const out = { ...DEFAULT_BOX };
  for (const f of BOX_FIELDS) {
    const v = fields[f];
    if (typeof v === "number" && Number.isFinite(v)) out[f] = v;
  }
  return out;
}

/** The stored value after one key was edited: the other keys kept as they are. */
export function withField(value: unknown, field: BoxField, v: number | string): Box {
  return { ...boxFields(value), [field]: v } as Box;
}

const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);

/** A box fitted into a `w`×`h` image: whole pixels, at least 1×1, inside the image. */
export function fitBox(box: Box, w: number, h: number): Box {
  const W = Math.max(1, Math.round(w));
  const H = Math.max(1, Math.round(h));
  const width = clamp(Math.round(box.width), 1, W);
  const height = clamp(Math.round(box.height), 1, H);
  return {
    x: clamp(Math.round(box.x), 0, W - width),
    y: clamp(Math.round(box.y), 0, H - height),
    width,
    height,
  };
}

/** The box moved by (dx, dy) image pixels, kept inside the image at its size. */
export function moveBox(box: Box, dx: number, dy: number, w: number, h: number): Box {
  const fitted = fitBox(box, w, h);
  return fitBox({ ...fitted, x: fitted.x + dx, y: fitted.y + dy }, w, h);
}

export type Corner = "nw" | "ne" | "sw" | "se";
export const CORNERS: readonly Corner[] = ["nw", "ne", "sw", "se"];

/**
 * The box with one corner dragged by (dx, dy) image pixels, the opposite corner staying put,
 * kept inside the image and at least a pixel each way.
 */
export function resizeBox(box: Box, corner: Corner, dx: number, dy: number, w: number, h: number): Box {
  const b = fitBox(box, w, h);
  let left = b.x;
  let top = b.y;
  let right = b.x + b.width;
  let bottom = b.y + b.height;
  if (corner === "nw" || corner === "sw") left = clamp(Math.round(left + dx), 0, right - 1);
  else right = clamp(Math.round(right + dx), left + 1, Math.round(w));
  if (corner === "nw" || corner === "ne") top = clamp(Math.round(top + dy), 0, bottom - 1);
  else bottom = clamp(Math.round(bottom + dy), top + 1, Math.round(h));
  return { x: left, y: top, width: right - left, height: bottom - top };
}

/** A new box drawn from one point to another (image pixels, either order), inside the image. */
export function boxFromPoints(ax: number, ay: number, bx: number, by: number, w: number, h: number): Box {
  const x0 = clamp(Math.round(Math.min(ax, bx)), 0, Math.round(w) - 1);
  const y0 = clamp(Math.round(Math.min(ay, by)), 0, Math.round(h) - 1);
  const x1 = clamp(Math.round(Math.max(ax, bx)), x0 + 1, Math.round(w));
  const y1 = clamp(Math.round(Math.max(ay, by)), y0 + 1, Math.round(h));
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/**
 * Where the crop shows over a `w`×`h` image, in percent of the image (CSS left/top/width/height).
 * As the server crops: a corner past the image moves onto its last row or column, and a region
 * past the right or bottom edge is cut there.
 */
export function boxPercent(box: Box, w: number, h: number): { left: number; top: number; width: number; height: number } {
  if (!(w > 0 && h > 0)) return { left: 0, top: 0, width: 0, height: 0 };
  const x = clamp(box.x, 0, w - 1);
  const y = clamp(box.y, 0, h - 1);
  const right = clamp(x + Math.max(0, box.width), x, w);
  const bottom = clamp(y + Math.max(0, box.height), y, h);
  return { left: (x / w) * 100, top: (y / h) * 100, width: ((right - x) / w) * 100, height: ((bottom - y) / h) * 100 };
}

/** The size of the crop the server will make of a `w`×`h` image (its own rule, `crop`). */
export function croppedSize(box: Box, w: number, h: number): { width: number; height: number } {
  const x = Math.min(box.x, w - 1);
  const y = Math.min(box.y, h - 1);
  return { width: Math.max(0, Math.min(box.width, w - x)), height: Math.max(0, Math.min(box.height, h - y)) };
}

/**
 * Whether a box, fitted into a `w`×`h` image, covers all of it (ComfyUI's default 512×512 over
 * a smaller image): it cannot move, so a drag inside it draws a new box rather than do nothing.
 */
export function coversImage(box: Box, w: number, h: number): boolean {
  const f = fitBox(box, w, h);
  return f.x === 0 && f.y === 0 && f.width >= Math.round(w) && f.height >= Math.round(h);
}

/**
 * What a drag that starts on the box (not on a corner) does: it moves the box, or draws a new
 * one when the box covers the whole image (there is nowhere to move it, and no image outside
 * it to start a new one on) or Alt is held (a new box over a large one).
 */
export function pressMode(box: Box, w: number, h: number, alt: boolean): "move" | "draw" {
  return alt || coversImage(box, w, h) ? "draw" : "move";
}

/**
 * Which sides of a stored box lie past a `w`×`h` image: the crop stops at the image's edge
 * there (`right`, `bottom`), or the box starts past it and the crop is its last column or
 * row (`outside`). The canvas draws those sides cut and says so.
 */
export function boxOverflow(box: Box, w: number, h: number): { right: boolean; bottom: boolean; outside: boolean } {
  const outside = box.x > w - 1 || box.y > h - 1;
  return { right: box.x + box.width > w, bottom: box.y + box.height > h, outside };
}
