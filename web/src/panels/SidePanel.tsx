/** Queue, history, gallery and the workflow library, plus the live latent preview of the running prompt. */

import { memo, useEffect, useRef, useState } from "react";
import { useGlobalRun } from "../canvas/context";
import type { RanOutputs } from "../lib/history";
import type { ImageRef, RunStore } from "../lib/runstore";
import { afterToggle, type SideTab, TABS, type TabToggle, tabStep } from "../lib/sidepanel";
import { HistoryTab } from "./HistoryTab";
import { QueueTab } from "./QueueTab";
import { WorkflowsTab } from "./WorkflowsTab";
import type { LibraryApi } from "../editor/useLibrary";
import type { LibraryEntry } from "../lib/library";
import { type FeedbackView, Thumb } from "./Thumb";

export type { FeedbackView };

type Tab = SideTab;

/** Whether the side panel is collapsed (the user's choice, kept in localStorage). */
export const SIDE_COLLAPSED_KEY = "steerflow.sidePanel.collapsed";

function readCollapsed(): boolean {
  try {
    return localStorage.getItem(SIDE_COLLAPSED_KEY) === "1";
  } catch {
    return false;
  }
}

function GalleryTab({ store, openImage, feedback }: { store: RunStore; openImage(img: ImageRef, set?: readonly ImageRef[]): void; feedback: FeedbackView | null }) {
  const { gallery } = useGlobalRun(store);
  return (
    <div className="sf-tab">
      {gallery.length === 0 && <div className="sf-muted">Images this tab makes appear here. Earlier runs, and other tabs' and clients', are in History.</div>}
      <div className="sf-gallery" aria-label="gallery">
        {gallery.map((img) => <Thumb key={img.key} img={img} openImage={(im) => openImage(im, gallery)} feedback={feedback} />)}
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

export const SidePanel = memo(function SidePanel({ store, onLoad, openImage, notify, feedback = null, clientId, openAutosave,
  toggleTab = null, library, openLibrary }: {
  store: RunStore;
  onLoad(obj: unknown, name: string, ran?: RanOutputs): void;
  /** Open another tab's autosaved graph (the History tab lists them). */
  openAutosave?(doc: unknown, name: string): void;
  openImage(img: ImageRef, set?: readonly ImageRef[]): void;
  notify(msg: string): void;
  /** Set while the graph has a FABRIC Feedback node. */
  feedback?: FeedbackView | null;
  /** This page's client id (its prompts are "yours" in the queue); stable across renders. */
  clientId(): string | undefined;
  /** The latest Q / H / W press (a new `seq` each press). */
  toggleTab?: TabToggle | null;
  /** The workflow library (the Workflows tab) and how to open one of its files. */
  library?: LibraryApi;
  openLibrary?(entry: LibraryEntry): Promise<boolean>;
}) {
  const [tab, setTab] = useState<Tab>("queue");
  const [collapsed, setCollapsed] = useState(readCollapsed);
  const collapse = (next: boolean) => {
    setCollapsed(next);
    try {
      localStorage.setItem(SIDE_COLLAPSED_KEY, next ? "1" : "0");
    } catch {
      // not remembered: storage unavailable
    }
  };
  const toggle = () => collapse(!collapsed);
  const seen = useRef(toggleTab?.seq);
  useEffect(() => {
    if (!toggleTab || toggleTab.seq === seen.current) return;
    seen.current = toggleTab.seq;
    const next = afterToggle(collapsed, tab, toggleTab.tab);
    if (next.collapsed !== collapsed) collapse(next.collapsed);
    setTab(next.tab);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [toggleTab]);
  if (collapsed) {
    return (
      <aside className="sf-side sf-side-collapsed" data-testid="side-panel">
        <button type="button" className="sf-side-toggle" onClick={toggle} aria-expanded={false}
          aria-label="Show side panel" title="Show the side panel (queue, history, gallery, workflows)">‹</button>
      </aside>
    );
  }
  return (
    <aside className="sf-side" data-testid="side-panel">
      <button type="button" className="sf-side-toggle" onClick={toggle} aria-expanded={true}
        aria-label="Hide side panel" title="Hide the side panel: more room for the canvas">›</button>
      <LivePreview store={store} />
      <div className="sf-tabs" role="tablist" aria-label="side panel" onKeyDown={(e) => {
        // the tabs pattern: one Tab stop, arrows (Home, End) move between the tabs and open them
        const next = tabStep(TABS, tab, e.key);
        if (!next) return;
        e.preventDefault();
        setTab(next);
        e.currentTarget.querySelector<HTMLElement>(`#sf-tab-${next}`)?.focus();
      }}>
        {TABS.map((t) => (
          <button key={t} id={`sf-tab-${t}`} type="button" role="tab" aria-selected={tab === t}
            aria-controls={`sf-tabpanel-${t}`} tabIndex={tab === t ? 0 : -1} className={tab === t ? "active" : ""}
            onClick={() => setTab(t)}>
            {t[0].toUpperCase() + t.slice(1)}
          </button>
        ))}
      </div>
      <div className="sf-tabpanel" role="tabpanel" id={`sf-tabpanel-${tab}`} aria-labelledby={`sf-tab-${tab}`}>
        {tab === "queue" && <QueueTab store={store} onLoad={onLoad} notify={notify} openImage={openImage} clientId={clientId} />}
        {tab === "history" && <HistoryTab store={store} onLoad={onLoad} openImage={openImage} feedback={feedback}
          openAutosave={openAutosave} />}
        {tab === "gallery" && <GalleryTab store={store} openImage={openImage} feedback={feedback} />}
        {tab === "workflows" && (library && openLibrary
          ? <WorkflowsTab library={library} open={openLibrary} />
          : <div className="sf-tab sf-muted">The workflow library is not available here.</div>)}
      </div>
    </aside>
  );
});
