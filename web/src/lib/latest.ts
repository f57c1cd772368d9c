/** The images of the newest prompt in the gallery (panels/LatestResult.tsx shows them under the queue). */

import type { GalleryItem } from "./runstore";

/** At most this many of the prompt's images are shown; the gallery has them all. */
export const LATEST_MAX = 6;

/** The newest gallery items that came from the same prompt as the newest one. */
export function latestImages(gallery: readonly GalleryItem[], max = LATEST_MAX): GalleryItem[] {
  if (!gallery.length) return [];
  const { promptId } = gallery[0];
  const same = promptId === undefined ? gallery.slice(0, 1) : gallery.filter((g) => g.promptId === promptId);
  return same.slice(0, max);
}
