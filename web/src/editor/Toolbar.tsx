/** The toolbar: queue (count, on change) and interrupt, editing, files, examples. */

import type { ExampleRef } from "../api";
import { QUEUE_COUNT_MAX } from "../lib/batch";
import { ExamplesBrowser } from "./ExamplesBrowser";
import type { Notify } from "./Toasts";
import type { QueueOptions } from "./useAutoQueue";

export type ToolbarActions = {
  queue(): void;
  queueSelected(): void;
  interrupt(): void;
  addNode(): void;
  undo(): void;
  redo(): void;
  open(): void;
  save(): void;
  exportApi(): void;
  openExample(ex: ExampleRef): void;
  clear(): void;
  refresh(): void;
  keys(): void;
};

export function Toolbar({ a, busy, docName, notify, options }: {
  a: ToolbarActions; busy: boolean; docName: string; notify: Notify; options: QueueOptions;
}) {
  return (
    <header className="sf-toolbar">
      <strong className="sf-brand">Steerflow</strong>
      <button type="button" className="sf-primary" onClick={a.queue} disabled={busy}
        title="Queue the workflow (Ctrl+Enter), as many times as the count beside">Queue</button>
      <input type="number" className="sf-queue-count" aria-label="queue count" min={1} max={QUEUE_COUNT_MAX}
        title="Batch count: how many prompts Queue adds (seeds set to increment / randomize move on between them)"
        value={options.count} onChange={(e) => options.setCount(Number(e.target.value))} />
      <label className="sf-queue-onchange" title="Queue once whenever the graph changes and the queue is empty">
        <input type="checkbox" aria-label="queue on change" checked={options.onChange}
          onChange={(e) => options.setOnChange(e.target.checked)} />
        on change
      </label>
      <button type="button" onClick={a.queueSelected} disabled={busy} data-testid="run-selected"
        title="Run only the selected output nodes and what they need">Run selected</button>
      <button type="button" onClick={a.interrupt} title="Interrupt the running prompt">Interrupt</button>
      <span className="sf-sep" />
      <button type="button" onClick={a.addNode} title="Add a node (or double-click the canvas)">Add node</button>
      <button type="button" onClick={a.undo} title="Undo (Ctrl+Z)">Undo</button>
      <button type="button" onClick={a.redo} title="Redo (Ctrl+Shift+Z)">Redo</button>
      <span className="sf-sep" />
      <button type="button" onClick={a.open} title="Open a workflow or a PNG (Ctrl+O)">Open</button>
      <button type="button" onClick={a.save} title="Save the workflow (Ctrl+S)">Save</button>
      <button type="button" onClick={a.exportApi}
        title="Download the prompt in API format (what Queue posts to /prompt), for scripts and steerflow run / submit">Export API</button>
      <ExamplesBrowser onOpen={a.openExample} notify={notify} />
      <button type="button" onClick={a.clear} title="Start an empty workflow">Clear</button>
      <button type="button" onClick={a.refresh} title="Reload node types and model lists">Refresh</button>
      <button type="button" onClick={a.keys} aria-label="keyboard shortcuts"
        title="Keyboard shortcuts and mouse gestures (?)">?</button>
      <span className="sf-docname" title="document name">{docName}</span>
    </header>
  );
}
