/**
 * The images of the last prompt that made any, under the queue: where the live preview
 * was, the finished picture stays in view (its output node may be off screen).
 */

import { useGlobalRun } from "../canvas/context";
import { latestImages } from "../lib/latest";
import type { ImageRef, RunStore } from "../lib/runstore";
import { Thumb } from "./Thumb";

export function LatestResult({ store, openImage }: { store: RunStore; openImage(img: ImageRef, set?: readonly ImageRef[]): void }) {
  const { gallery } = useGlobalRun(store);
  const latest = latestImages(gallery);
  if (!latest.length) return null;
  const all = gallery.filter((g) => g.promptId !== undefined && g.promptId === latest[0].promptId).length;
  return (
    <section className="sf-latest" aria-label="last result">
      <div className="sf-muted">
        Last result{all > 1 ? ` · ${all} images` : ""} · click to enlarge
        {all > latest.length ? ` (all in Gallery)` : ""}
      </div>
      <div className="sf-latest-images">
        {latest.map((img) => <Thumb key={img.key} img={img} openImage={(img) => openImage(img, latest)} feedback={null} />)}
      </div>
    </section>
  );
}
