/** One image at full size, with download and "open its workflow". */

import { viewUrl } from "../api";
import type { ImageRef } from "../lib/runstore";
import { useEscape } from "./useEscape";
import { useReturnFocus } from "./useReturnFocus";

export function Lightbox({ image, onClose, onOpenWorkflow, caption }: {
  image: ImageRef;
  onClose(): void;
  onOpenWorkflow(img: ImageRef): void;
  /** Extra text under the image (e.g. the history entry's prompt and time). */
  caption?: string;
}) {
  useEscape(onClose); // as every other dialog here, and ComfyUI's image viewer
  useReturnFocus(true); // closed: the focus goes back to the image that opened it
  return (
    <div className="sf-lightbox" onClick={onClose} role="dialog" aria-label="image">
      <img alt={image.filename} src={viewUrl(image)} />
      <div className="sf-lightbox-bar" onClick={(e) => e.stopPropagation()}>
        <span>{image.filename}</span>
        {caption && <span className="sf-muted sf-lightbox-caption">{caption}</span>}
        <a href={viewUrl(image)} download={image.filename}>Download</a>
        <button type="button" onClick={() => onOpenWorkflow(image)}>Open its workflow</button>
        <button type="button" onClick={onClose}>Close</button>
      </div>
    </div>
  );
}
