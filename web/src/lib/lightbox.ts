/** The lightbox's paging: previous / next through the images it was opened on (a gallery, a node's images). */

import type { ImageRef } from "./runstore";

/** Whether two refs name the same file. */
export function sameImage(a: ImageRef, b: ImageRef): boolean {
  return a.filename === b.filename && (a.subfolder ?? "") === (b.subfolder ?? "") && (a.type ?? "output") === (b.type ?? "output");
}

/** The images the lightbox pages through, and where `img` is among them (itself alone when not among `set`). */
export function lightboxSet(img: ImageRef, set?: readonly ImageRef[]): { images: readonly ImageRef[]; index: number } {
  const index = set ? set.findIndex((s) => s === img) : -1;
  const found = index >= 0 ? index : set ? set.findIndex((s) => sameImage(s, img)) : -1;
  return found >= 0 && set ? { images: set, index: found } : { images: [img], index: 0 };
}

/** The image after (`step` 1) or before (-1) `index` of `count`, round from the last to the first, as ComfyUI's gallery. */
export function stepImage(index: number, count: number, step: 1 | -1): number {
  if (count <= 0) return 0;
  return (((index + step) % count) + count) % count;
}
