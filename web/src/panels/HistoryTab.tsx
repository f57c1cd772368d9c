/**
 * The History tab: past prompts from the server's /history. Each entry shows when
 * it ran, how long it took, its prompt's text, its outputs (count and size), a
 * large view of its images and "load its workflow".
 */

import { useCallback, useEffect, useMemo, useState } from "react";
import { clearHistory, deleteHistory, getHistory, type HistoryEntry, viewUrl } from "../api";
import { useGlobalRun } from "../canvas/context";
import { formatDuration, promptExcerpt, promptSeeds, type RanOutputs, timing } from "../lib/history";
import { promptNumberText } from "../lib/queueview";
import type { ImageRef, RunStore } from "../lib/runstore";
import { tabSaves } from "../editor/useGraphStore";
import { GRAPHS_KEPT_EVENT, listReplaced } from "../lib/replaced";
import { type FeedbackView, Thumb } from "./Thumb";

/** The workflow a queued prompt carried (our document in extra_pnginfo), else its API prompt. */
export function workflowOf(prompt: unknown, extra: Record<string, unknown> | undefined): unknown {
  const info = extra?.extra_pnginfo as { workflow?: unknown } | undefined;
  return info?.workflow ?? prompt;
}

/** The name the canvas queued a workflow under (its document's `extra.name`), else "workflow". */
export function workflowName(extra: Record<string, unknown> | undefined): string {
  const info = extra?.extra_pnginfo as { workflow?: { extra?: { name?: unknown } } } | undefined;
  const name = info?.workflow?.extra?.name;
  return typeof name === "string" && name.trim() ? name : "workflow";
}

function formatTime(ms: number): string {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** Sizes read for the size line (a batch of many shows the first few's). */
const SIZES_READ = 8;

/** "2 images · 512×512" (each size once, "64×64, 128×128") once the images have loaded. */
function OutputSize({ images, text }: { images: ImageRef[]; text: number }) {
  const [sizes, setSizes] = useState<string[]>([]);
  useEffect(() => {
    let live = true;
    const read = images.slice(0, SIZES_READ).map((ref) => new Promise<string | null>((done) => {
      const img = new Image();
      img.onload = () => done(`${img.naturalWidth}×${img.naturalHeight}`);
      img.onerror = () => done(null);
      img.src = viewUrl(ref);
    }));
    void Promise.all(read).then((got) => {
      if (live) setSizes([...new Set(got.filter((s): s is string => s !== null))]);
    });
    return () => { live = false; };
  }, [images]);
  const parts: string[] = [];
  if (images.length) parts.push(`${images.length} image${images.length === 1 ? "" : "s"}${sizes.length ? ` · ${sizes.join(", ")}` : ""}`);
  if (text) parts.push(`${text} text output${text === 1 ? "" : "s"}`);
  if (!parts.length) parts.push("no outputs");
  return <span className="sf-history-size" data-testid="output-size">{parts.join(" · ")}</span>;
}

function HistoryItem({ h, onLoad, openImage, feedback, onDelete }: {
  h: HistoryEntry; onLoad(obj: unknown, name: string, ran?: RanOutputs): void; openImage(img: ImageRef, set?: readonly ImageRef[]): void; feedback: FeedbackView | null;
  onDelete(promptId: string): void;
}) {
  const images = useMemo(() => Object.values(h.outputs).flatMap((o) => o.images ?? []), [h.outputs]);
  const texts = Object.values(h.outputs).reduce((a, o) => a + ((o as { text?: unknown[] }).text?.length ?? 0), 0);
  const { start, durationMs } = timing(h.messages);
  const excerpt = promptExcerpt(h.prompt);
  const seeds = promptSeeds(h.prompt); // picking the best of a batch of seeds needs them
  // each entry's buttons are described by its number and status (a screen reader's list of
  // "View, Load, Delete" said which entry they were for)
  const head = `sf-history-${h.promptId.replace(/[^\w-]/g, "_")}`;
  return (
    <li className={`sf-history-item sf-status-${h.status}`} data-prompt-id={h.promptId}>
      <div className="sf-history-head">
        <span id={head} title={`number ${h.number}`}>{promptNumberText(h.number)} {h.status}</span>
        <span className="sf-history-actions">
          {images.length > 0 && (
            <button type="button" className="sf-small" onClick={() => openImage(images[0], images)} title="Show the image large"
              aria-describedby={head}>View</button>
          )}
          <button type="button" className="sf-small" onClick={() => onLoad(workflowOf(h.prompt, h.extra), workflowName(h.extra), { promptId: h.promptId, outputs: h.outputs })}
            title="Load its workflow onto the canvas" aria-describedby={head}>Load</button>
          <button type="button" className="sf-small" onClick={() => onDelete(h.promptId)}
            title="Delete this entry from the server's history (its images stay in output/)" aria-describedby={head}>Delete</button>
        </span>
      </div>
      <div className="sf-history-meta sf-muted">
        {start !== undefined && <time dateTime={new Date(start).toISOString()}>{formatTime(start)}</time>}
        {durationMs !== undefined && <span data-testid="duration"> · {formatDuration(durationMs)}</span>}
        {" · "}<OutputSize images={images} text={texts} />
        {seeds.length > 0 && <span data-testid="seeds"> · seed {seeds.slice(0, 3).join(", ")}{seeds.length > 3 ? "…" : ""}</span>}
      </div>
      {excerpt && <div className="sf-history-prompt" title={excerpt}>“{excerpt}”</div>}
      {(h.reason || h.warnings.length > 0) && (
        <ul className="sf-history-notes" data-testid="history-notes">
          {h.reason && <li className="sf-history-reason">{h.reason}</li>}
          {h.warnings.map((w, i) => <li key={i} className="sf-history-warning">⚠ {w}</li>)}
        </ul>
      )}
      {images.length > 0 && (
        <div className="sf-thumbs">
          {images.slice(0, 8).map((img, i) => (
            <Thumb key={i} img={img} openImage={(im) => openImage(im, images)} feedback={feedback} />
          ))}
        </div>
      )}
    </li>
  );
}

const CLEAR_HISTORY_CONFIRM =
  "Clear the server's whole history? This deletes it for everyone using this server, and cannot be undone.";

/**
 * The graphs other tabs autosaved (lib/autosave.ts), newest first: a closed tab's graph is
 * kept (up to MAX_SLOTS tabs) and opens here, as an ordinary, undoable load.
 */
const readOtherTabs = () => tabSaves().others();
const readReplaced = () => listReplaced(localStorage);

/** Graphs kept in this browser (`read` lists them, newest first), each opened by a click. */
function SavedGraphs({ open, read, title, testId }: {
  open(doc: unknown, name: string): void; read(): { t: number; name: string; doc: string }[]; title: string; testId: string;
}) {
  const [list, setList] = useState(read);
  useEffect(() => { // a graph replaced while the tab shows, or kept by another tab
    const again = () => setList(read());
    window.addEventListener(GRAPHS_KEPT_EVENT, again);
    window.addEventListener("storage", again);
    return () => {
      window.removeEventListener(GRAPHS_KEPT_EVENT, again);
      window.removeEventListener("storage", again);
    };
  }, [read]);
  if (!list.length) return null;
  return (
    <details className="sf-other-tabs" data-testid={testId}
      onToggle={(e) => (e.currentTarget as HTMLDetailsElement).open && setList(read())}>
      <summary className="sf-muted">{title} ({list.length})</summary>
      <ul className="sf-list">
        {list.map((o) => (
          <li key={`${o.t}:${o.name}`} className="sf-saved-graph sf-history-head">
            <span title={new Date(o.t).toLocaleString()}>{o.name || "workflow"} · {formatTime(o.t)}</span>
            <button type="button" className="sf-small" onClick={() => {
              try {
                open(JSON.parse(o.doc), o.name || "workflow");
              } catch {
                // a broken slot: nothing to open
              }
            }}>Open</button>
          </li>
        ))}
      </ul>
    </details>
  );
}

export function HistoryTab({ store, onLoad, openImage, feedback, openAutosave }: {
  store: RunStore; onLoad(obj: unknown, name: string, ran?: RanOutputs): void; openImage(img: ImageRef, set?: readonly ImageRef[]): void; feedback: FeedbackView | null;
  /** Open another tab's autosaved graph under its name. */
  openAutosave?(doc: unknown, name: string): void;
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
        <button type="button" className="sf-small" title="Delete the server's whole history, for everyone using this server"
          onClick={() => {
            // the history is the server's, shared by every client: one click must not wipe it
            if (!window.confirm(CLEAR_HISTORY_CONFIRM)) return;
            clearHistory().then(refresh, refresh);
          }}>Clear history…</button>
      </div>
      {openAutosave && <SavedGraphs open={openAutosave} read={readOtherTabs}
        title="Other tabs' autosaved graphs" testId="other-tabs" />}
      {openAutosave && <SavedGraphs open={openAutosave} read={readReplaced}
        title="Graphs replaced in this browser (opened over, or cleared)" testId="replaced-graphs" />}
      {items.length === 0 && <div className="sf-muted">Nothing has run yet.</div>}
      <ul className="sf-list" aria-label="history">
        {items.map((h) => (
          <HistoryItem key={h.promptId} h={h} onLoad={onLoad} openImage={openImage} feedback={feedback}
            onDelete={(id) => {
              setItems((all) => all.filter((x) => x.promptId !== id)); // at once, then the server's word
              deleteHistory([id]).then(refresh, refresh);
            }} />
        ))}
      </ul>
    </div>
  );
}
