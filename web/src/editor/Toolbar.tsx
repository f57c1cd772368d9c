/** The toolbar: queue and interrupt, editing, files, examples. */

import type { ExampleRef } from "../api";
import { ExamplesMenu } from "./ExamplesMenu";
import type { Notify } from "./Toasts";

export type ToolbarActions = {
  queue(): void;
  queueSelected(): void;
  interrupt(): void;
  addNode(): void;
  undo(): void;
  redo(): void;
  open(): void;
  save(): void;
  openExample(ex: ExampleRef): void;
  clear(): void;
  refresh(): void;
};

export function Toolbar({ a, busy, docName, notify }: { a: ToolbarActions; busy: boolean; docName: string; notify: Notify }) {
  return (
    <header className="sf-toolbar">
      <strong className="sf-brand">Steerflow</strong>
      <button type="button" className="sf-primary" onClick={a.queue} disabled={busy}
        title="Queue the workflow (Ctrl+Enter)">Queue</button>
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
      <ExamplesMenu onOpen={a.openExample} notify={notify} />
      <button type="button" onClick={a.clear} title="Start an empty workflow">Clear</button>
      <button type="button" onClick={a.refresh} title="Reload node types and model lists">Refresh</button>
      <span className="sf-docname" title="document name">{docName}</span>
    </header>
  );
}
