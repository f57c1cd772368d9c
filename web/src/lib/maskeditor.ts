/**
 * The mask editor's pure logic (editor/MaskEditor.tsx draws and uploads).
 *
 * A mask is one byte a pixel, row by row: 0 = not masked, 255 = fully masked. ComfyUI keeps
 * a mask in an image's alpha, inverted: alpha 0 where the user painted (Load Image's MASK
 * output is 1 − alpha). So reading an image's alpha gives 255 − alpha, and the PNG uploaded
 * to `/upload/mask` carries 255 − mask as its alpha.
 */

import { annotatedName } from "./feedback";

/** The largest side the editor paints on (a 4096×4096 mask is 16 MiB, each undo step as much). */
export const MAX_SIDE = 4096;

/** Why an image of this size cannot be edited, or null when it can. */
export function sizeIssue(width: number, height: number): string | null {
  if (!(width > 0 && height > 0)) return "The image has no pixels to paint on.";
  if (width > MAX_SIDE || height > MAX_SIDE) {
    return `The image is ${width}×${height} pixels; the mask editor paints on images of at most ${MAX_SIDE} pixels a side.`;
  }
  return null;
}

type Pixels = ArrayLike<number>;

/** The mask held by RGBA pixels' alpha (ComfyUI's convention: masked where transparent). */
export function maskFromAlpha(rgba: Pixels, width: number, height: number): Uint8Array {
  const n = width * height;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = 255 - rgba[i * 4 + 3];
  return out;
}

/**
 * The mask from RGBA pixels of a grey image that shows an alpha channel (`/view?channel=a`:
 * white where opaque, black where transparent).
 */
export function maskFromAlphaView(rgba: Pixels, width: number, height: number): Uint8Array {
  const n = width * height;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = 255 - rgba[i * 4];
  return out;
}

/** RGBA pixels (black) whose alpha holds the mask as ComfyUI reads it: 255 − mask. */
export function maskToAlpha(mask: Uint8Array): Uint8ClampedArray<ArrayBuffer> {
  const out = new Uint8ClampedArray(mask.length * 4);
  for (let i = 0; i < mask.length; i++) out[i * 4 + 3] = 255 - mask[i];
  return out;
}

export function invertMask(mask: Uint8Array): void {
  for (let i = 0; i < mask.length; i++) mask[i] = 255 - mask[i];
}

export function isEmptyMask(mask: Uint8Array): boolean {
  for (let i = 0; i < mask.length; i++) if (mask[i]) return false;
  return true;
}

export type Brush = {
  /** Radius in image pixels. */
  radius: number;
  /** 0..1: the share of the radius painted at full strength; the rest fades out. */
  hardness: number;
  /** 0..1: the strength at the brush's centre. */
  opacity: number;
  erase: boolean;
};

/** A pixel rectangle (x, y inclusive; w, h its size). */
export type Rect = { x: number; y: number; w: number; h: number };

export function unionRect(a: Rect | null, b: Rect | null): Rect | null {
  if (!a) return b;
  if (!b) return a;
  const x = Math.min(a.x, b.x);
  const y = Math.min(a.y, b.y);
  return { x, y, w: Math.max(a.x + a.w, b.x + b.w) - x, h: Math.max(a.y + a.h, b.y + b.h) - y };
}

/** The strength (0..1) of the brush at `d` radii from its centre. */
export function brushFalloff(d: number, hardness: number): number {
  if (d >= 1) return 0;
  const hard = Math.min(1, Math.max(0, hardness));
  if (d <= hard) return 1;
  const t = (1 - d) / (1 - hard); // 1 at the hard edge, 0 at the rim
  return t * t * (3 - 2 * t);
}

/**
 * One dab of the brush at (cx, cy) (image pixels; a pixel's centre is at +0.5). Painting
 * raises pixels to the brush's strength, erasing lowers them: dabs of one stroke overlap
 * without building up past the opacity. Returns the rectangle changed, or null.
 */
export function stampDab(mask: Uint8Array, width: number, height: number, cx: number, cy: number,
  brush: Brush): Rect | null {
  const r = Math.max(0.5, brush.radius);
  const x0 = Math.max(0, Math.floor(cx - r));
  const y0 = Math.max(0, Math.floor(cy - r));
  const x1 = Math.min(width - 1, Math.ceil(cx + r));
  const y1 = Math.min(height - 1, Math.ceil(cy + r));
  if (x0 > x1 || y0 > y1) return null;
  const opacity = Math.min(1, Math.max(0, brush.opacity));
  let touched = false;
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      // a brush under a pixel wide still paints the pixel it is on
      const d = r <= 0.5 && Math.abs(dx) <= 0.5 && Math.abs(dy) <= 0.5 ? 0 : Math.hypot(dx, dy) / r;
      const s = Math.round(255 * opacity * brushFalloff(d, brush.hardness));
      if (s <= 0) continue;
      const i = y * width + x;
      if (brush.erase) {
        if (mask[i] > 255 - s) mask[i] = 255 - s;
      } else if (mask[i] < s) {
        mask[i] = s;
      }
      touched = true;
    }
  }
  return touched ? { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 } : null;
}

/** The dab centres from `a` (excluded: its dab is down already) to `b` (included), `spacing` apart. */
export function dabPoints(a: [number, number], b: [number, number], spacing: number): [number, number][] {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = Math.hypot(dx, dy);
  const step = Math.max(0.25, spacing);
  const n = Math.max(1, Math.ceil(len / step));
  if (len === 0) return [];
  const out: [number, number][] = [];
  for (let k = 1; k <= n; k++) out.push([a[0] + (dx * k) / n, a[1] + (dy * k) / n]);
  return out;
}

/** The brush from `a` to `b`: dabs a quarter of the radius apart. Returns the rectangle changed. */
export function strokeSegment(mask: Uint8Array, width: number, height: number, a: [number, number],
  b: [number, number], brush: Brush): Rect | null {
  let dirty: Rect | null = null;
  for (const [x, y] of dabPoints(a, b, brush.radius / 4)) {
    dirty = unionRect(dirty, stampDab(mask, width, height, x, y, brush));
  }
  return dirty;
}

/** The overlay's RGBA pixels for `rect` of the mask: `color` at `alpha` × the mask's strength. */
export function overlayPixels(mask: Uint8Array, width: number, rect: Rect,
  color: [number, number, number], alpha = 0.6): Uint8ClampedArray<ArrayBuffer> {
  const out = new Uint8ClampedArray(rect.w * rect.h * 4);
  for (let y = 0; y < rect.h; y++) {
    const row = (rect.y + y) * width + rect.x;
    for (let x = 0; x < rect.w; x++) {
      const m = mask[row + x];
      const o = (y * rect.w + x) * 4;
      out[o] = color[0];
      out[o + 1] = color[1];
      out[o + 2] = color[2];
      out[o + 3] = Math.round(m * alpha);
    }
  }
  return out;
}

/** The scale that fits a `width`×`height` image into a box (small images grow, up to 16×). */
export function fitScale(width: number, height: number, boxW: number, boxH: number): number {
  if (!(width > 0 && height > 0 && boxW > 0 && boxH > 0)) return 1;
  return Math.min(16, boxW / width, boxH / height);
}

/** A brush radius suited to the image: about a thirtieth of its longer side. */
export function defaultRadius(width: number, height: number): number {
  return Math.min(100, Math.max(2, Math.round(Math.max(width, height) / 30)));
}

/**
 * Undo steps of the mask: snapshots taken before each change, as many as fit `maxBytes`
 * (at least one), the oldest dropped first.
 */
export class MaskHistory {
  private undos: Uint8Array[] = [];
  private redos: Uint8Array[] = [];

  constructor(private maxBytes = 128 << 20) {}

  /** Call before changing `mask`. */
  record(mask: Uint8Array): void {
    this.undos.push(mask.slice());
    this.redos = [];
    const keep = Math.max(1, Math.floor(this.maxBytes / Math.max(1, mask.length)));
    if (this.undos.length > keep) this.undos.splice(0, this.undos.length - keep);
  }

  /** Put the last recorded state back into `mask`; false when there is none. */
  undo(mask: Uint8Array): boolean {
    return MaskHistory.swap(this.undos, this.redos, mask);
  }

  redo(mask: Uint8Array): boolean {
    return MaskHistory.swap(this.redos, this.undos, mask);
  }

  /** Move `mask`'s state onto `to` and the last state of `from` into `mask`. */
  private static swap(from: Uint8Array[], to: Uint8Array[], mask: Uint8Array): boolean {
    const state = from.pop();
    if (!state) return false;
    to.push(mask.slice());
    mask.set(state);
    return true;
  }

  get canUndo(): boolean {
    return this.undos.length > 0;
  }

  get canRedo(): boolean {
    return this.redos.length > 0;
  }
}

/** The name a saved mask is uploaded under (the server adds a suffix if it is taken). */
export function maskFileName(now = Date.now()): string {
  return `clipspace-mask-${now}.png`;
}

/** The Load Image value for the server's `/upload/mask` reply: "clipspace/x.png [input]". */
export function savedImageValue(reply: { name: string; subfolder?: string; type?: string }): string {
  return annotatedName({ filename: reply.name, subfolder: reply.subfolder ?? "", type: reply.type || "input" });
}
