/** An image thumbnail; with FABRIC in the graph, its Like / Dislike toggles and state. */

import { viewUrl } from "../api";
import { type FeedbackKind, type FeedbackState, imageFeedback } from "../lib/feedback";
import type { ImageRef } from "../lib/runstore";

/** Like / Dislike on images, shown while the graph has a FABRIC Feedback node. */
export type FeedbackView = { state: FeedbackState; toggle(img: ImageRef, kind: FeedbackKind): void };

export function Thumb({ img, openImage, feedback }: { img: ImageRef; openImage(img: ImageRef): void; feedback: FeedbackView | null }) {
  const now = feedback ? imageFeedback(feedback.state, img) : null;
  return (
    <div className={`sf-thumb${now ? ` sf-${now}` : ""}`} data-feedback={now ?? undefined}>
      <img alt={img.filename} src={viewUrl(img)} onClick={() => openImage(img)} loading="lazy" />
      {feedback && (
        <div className="sf-feedback">
          <button type="button" aria-label={`Like ${img.filename}`} aria-pressed={now === "liked"}
            title="Like: add to FABRIC's liked images (again: remove)" onClick={() => feedback.toggle(img, "liked")}>♥</button>
          <button type="button" aria-label={`Dislike ${img.filename}`} aria-pressed={now === "disliked"}
            title="Dislike: add to FABRIC's disliked images (again: remove)" onClick={() => feedback.toggle(img, "disliked")}>✕</button>
        </div>
      )}
    </div>
  );
}
