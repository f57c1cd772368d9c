/**
 * One image at full size, with download and "open its workflow"; opened on an image of a set
 * (the gallery, a node's or a history entry's images), it pages through them with ArrowLeft /
 * ArrowRight and its ‹ › buttons, as ComfyUI's gallery viewer does. It is modal: Tab stays in
 * its bar, Escape closes it and the focus goes back to the image that opened it.
 */

import { useEffect, useRef } from "react";
import { viewUrl } from "../api";
import { stepImage } from "../lib/lightbox";
import type { ImageRef } from "../lib/runstore";
import { useEscape } from "./useEscape";
import { useFocusTrap } from "./useFocusTrap";
import { useReturnFocus } from "./useReturnFocus";

export function Lightbox({ images, index, onIndex, onClose, onOpenWorkflow, caption }: {
  /** The images it pages through (one: no paging). */
  images: readonly ImageRef[];
  index: number;
  onIndex(index: number): void;
  onClose(): void;
  onOpenWorkflow(img: ImageRef): void;
  /** Extra text under the image (e.g. the history entry's prompt and time). */
  caption?: string;
}) {
  const image = images[Math.min(index, images.length - 1)];
  const box = useRef<HTMLDivElement>(null);
  useEscape(onClose); // as every other dialog here, and ComfyUI's image viewer
  useReturnFocus(true, box); // closed: the focus goes back to the image that opened it
  useFocusTrap(box);
  const many = images.length > 1;
  const step = (d: 1 | -1) => onIndex(stepImage(index, images.length, d));
  const stepRef = useRef(step);
  stepRef.current = step;
  useEffect(() => {
    box.current?.focus({ preventScroll: true }); // the keyboard is the dialog's (Tab goes into its bar)
  }, []);
  useEffect(() => {
    if (!many) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.ctrlKey || e.metaKey || e.altKey || (e.key !== "ArrowLeft" && e.key !== "ArrowRight")) return;
      e.preventDefault();
      e.stopPropagation(); // not a move of the selected nodes under it
      stepRef.current(e.key === "ArrowRight" ? 1 : -1);
    };
    window.addEventListener("keydown", onKey, true);
    return () => window.removeEventListener("keydown", onKey, true);
  }, [many]);
  if (!image) return null;
  return (
    <div className="sf-lightbox" onClick={onClose} role="dialog" aria-modal="true" aria-label="image" ref={box}
      tabIndex={-1}>
      <img alt={image.filename} src={viewUrl(image)} />
      <div className="sf-lightbox-bar" onClick={(e) => e.stopPropagation()}>
        {many && (
          <button type="button" onClick={() => step(-1)} aria-label="Previous image" title="Previous image (←)">‹</button>
        )}
        {many && <span className="sf-muted" data-testid="lightbox-position">{index + 1} / {images.length}</span>}
        {many && (
          <button type="button" onClick={() => step(1)} aria-label="Next image" title="Next image (→)">›</button>
        )}
        <span>{image.filename}</span>
        {caption && <span className="sf-muted sf-lightbox-caption">{caption}</span>}
        <a href={viewUrl(image)} download={image.filename}>Download</a>
        <button type="button" onClick={() => onOpenWorkflow(image)}>Open its workflow</button>
        <button type="button" onClick={onClose}>Close</button>
      </div>
    </div>
  );
}
