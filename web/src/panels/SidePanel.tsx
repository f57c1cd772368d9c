/** Queue, history and gallery, plus the live latent preview of the running prompt. */

import { memo, useCallback, useEffect, useState } from "react";
import {
  clearHistory, deleteFromQueue, getHistory, getQueue, type HistoryEntry, interrupt, type QueueItem, viewUrl,
} from "../api";
import { useGlobalRun } from "../canvas/context";
import { type FeedbackKind, type FeedbackState, imageFeedback } from "../lib/feedback";
import type { ImageRef, RunStore } from "../lib/runstore";

/** Like / Dislike on images, shown while the graph has a FABRIC Feedback node. */
export type FeedbackView = { state: FeedbackState; toggle(img: ImageRef, kind: FeedbackKind): void };

type Tab = "queue" | "history" | "gallery";

function workflowOf(prompt: unknown, extra: Record<string, unknown> | undefined): unknown {
  const info = extra?.extra_pnginfo as { workflow?: unknown } | undefined;
  return info?.workflow ?? prompt;
}

function QueueTab({ store, onLoad, notify }: { store: RunStore; onLoad(obj: unknown): void; notify(msg: string): void }) {
  const { queueVersion, running, executing } = useGlobalRun(store);
  const [queue, setQueue] = useState<{ running: QueueItem[]; pending: QueueItem[] }>({ running: [], pending: [] });
  const refresh = useCallback(() => {
    getQueue().then(setQueue).catch(() => undefined);
  }, []);
  useEffect(refresh, [refresh, queueVersion, running]);
  const cancel = async (item: QueueItem, isRunning: boolean) => {
    try {
      if (isRunning) await interrupt(item.promptId);
      else await deleteFromQueue([item.promptId]);
    } catch (e) {
      notify(`Cancel failed: ${(e as Error).message}`);
    }
    refresh();
  };
  const row = (item: QueueItem, isRunning: boolean) => (
    <li key={item.promptId} className={`sf-queue-item${isRunning ? " running" : ""}`} data-prompt-id={item.promptId}>
      <span>#{item.number} {isRunning ? `running${executing ? ` (node ${executing})` : ""}` : "pending"}</span>
      <span className="sf-queue-actions">
        <button type="button" className="sf-small" onClick={() => onLoad(workflowOf(item.prompt, item.extra))}>Load</button>
        <button type="button" className="sf-small" onClick={() => cancel(item, isRunning)}>
          {isRunning ? "Interrupt" : "Cancel"}
        </button>
      </span>
    </li>
  );
  return (
    <div className="sf-tab">
      {queue.running.length === 0 && queue.pending.length === 0 && <div className="sf-muted">The queue is empty.</div>}
      <ul className="sf-list" aria-label="queue">
        {queue.running.map((i) => row(i, true))}
        {queue.pending.map((i) => row(i, false))}
      </ul>
    </div>
  );
}

/** A thumbnail; with FABRIC in the graph, its Like / Dislike toggles and state. */
function Thumb({ img, openImage, feedback }: { img: ImageRef; openImage(img: ImageRef): void; feedback: FeedbackView | null }) {
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

function HistoryTab({ store, onLoad, openImage, feedback }: {
  store: RunStore; onLoad(obj: unknown): void; openImage(img: ImageRef): void; feedback: FeedbackView | null;
}) {
  const { queueVersion } = useGlobalRun(store);
  const [items, setItems] = useState<HistoryEntry[]>([]);
  const refresh = useCallback(() => {
    getHistory(30).then(setItems).catch(() => undefined);
  }, []);
  useEffect(refresh, [refresh, queueVersion]);
  return (
    <div className="sf-tab">
      <div className="sf-tab-actions">
        <button type="button" className="sf-small" onClick={refresh}>Refresh</button>
        <button type="button" className="sf-small" onClick={() => clearHistory().then(refresh, refresh)}>Clear</button>
      </div>
      {items.length === 0 && <div className="sf-muted">Nothing has run yet.</div>}
      <ul className="sf-list" aria-label="history">
        {items.map((h) => {
          const images = Object.values(h.outputs).flatMap((o) => o.images ?? []);
          return (
            <li key={h.promptId} className={`sf-history-item sf-status-${h.status}`} data-prompt-id={h.promptId}>
              <div className="sf-history-head">
                <span>#{h.number} {h.status}</span>
                <button type="button" className="sf-small" onClick={() => onLoad(workflowOf(h.prompt, h.extra))}>Load</button>
              </div>
              {images.length > 0 && (
                <div className="sf-thumbs">
                  {images.slice(0, 8).map((img, i) => (
                    <Thumb key={i} img={img} openImage={openImage} feedback={feedback} />
                  ))}
                </div>
              )}
            </li>
          );
        })}
      </ul>
    </div>
  );
}

function GalleryTab({ store, openImage, feedback }: { store: RunStore; openImage(img: ImageRef): void; feedback: FeedbackView | null }) {
  const { gallery } = useGlobalRun(store);
  return (
    <div className="sf-tab">
      {gallery.length === 0 && <div className="sf-muted">Images made in this session appear here.</div>}
      <div className="sf-gallery" aria-label="gallery">
        {gallery.map((img) => <Thumb key={img.key} img={img} openImage={openImage} feedback={feedback} />)}
      </div>
    </div>
  );
}

function LivePreview({ store }: { store: RunStore }) {
  const { preview, running, executing } = useGlobalRun(store);
  if (!running || !preview) return null;
  return (
    <div className="sf-live">
      <div className="sf-muted">Live preview{executing ? ` · node ${executing}` : ""}</div>
      <img alt="live latent preview" src={preview} />
    </div>
  );
}

export const SidePanel = memo(function SidePanel({ store, onLoad, openImage, notify, feedback = null }: {
  store: RunStore;
  onLoad(obj: unknown): void;
  openImage(img: ImageRef): void;
  notify(msg: string): void;
  /** Set while the graph has a FABRIC Feedback node. */
  feedback?: FeedbackView | null;
}) {
  const [tab, setTab] = useState<Tab>("queue");
  return (
    <aside className="sf-side">
      <LivePreview store={store} />
      <div className="sf-tabs" role="tablist">
        {(["queue", "history", "gallery"] as Tab[]).map((t) => (
          <button key={t} type="button" role="tab" aria-selected={tab === t} className={tab === t ? "active" : ""}
            onClick={() => setTab(t)}>
            {t[0].toUpperCase() + t.slice(1)}
          </button>
        ))}
      </div>
      {tab === "queue" && <QueueTab store={store} onLoad={onLoad} notify={notify} />}
      {tab === "history" && <HistoryTab store={store} onLoad={onLoad} openImage={openImage} feedback={feedback} />}
      {tab === "gallery" && <GalleryTab store={store} openImage={openImage} feedback={feedback} />}
    </aside>
  );
});
