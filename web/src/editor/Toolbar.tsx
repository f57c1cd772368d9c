/** The toolbar: queue (count, on change) and interrupt, editing, files, examples. */

import { useEffect, useState } from "react";
import type { ExampleRef } from "../api";
import { parseCountText, QUEUE_COUNT_MAX } from "../lib/batch";
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

/**
 * The batch count. The field keeps what is typed: emptying it to type a new count does
 * not put "1" back (which made a typed 3 read 13); the count changes once a whole number
 * is typed, and the field shows the count again when left.
 */
function QueueCount({ options }: { options: QueueOptions }) {
  const [text, setText] = useState(String(options.count));
  const [editing, setEditing] = useState(false);
  useEffect(() => {
    if (!editing) setText(String(options.count));
  }, [options.count, editing]);
  return (
    <input type="number" className="sf-queue-count" aria-label="queue count" min={1} max={QUEUE_COUNT_MAX}
      title="Batch count: how many prompts Queue adds (seeds set to increment / randomize move on between them)"
      value={text}
      onFocus={() => setEditing(true)}
      onBlur={() => {
        setEditing(false);
        setText(String(options.count));
      }}
      onChange={(e) => {
        setText(e.target.value);
        const n = parseCountText(e.target.value);
        if (n !== null) options.setCount(n);
      }} />
  );
}

export function Toolbar({ a, busy, docName, notify, options }: {
  a: ToolbarActions; busy: boolean; docName: string; notify: Notify; options: QueueOptions;
}) {
  return (
    <header className="sf-toolbar">
      <strong className="sf-brand">Steerflow</strong>
      <button type="button" className="sf-primary" onClick={a.queue} disabled={busy}
        title="Queue the workflow (Ctrl+Enter), as many times as the count beside">Queue</button>
      <QueueCount options={options} />
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
