/**
 * The toolbar: queue (count, on change) and interrupt, editing, files, examples.
 *
 * It stays one line. When the window is too narrow for every item, the least important
 * ones leave the row, lowest rank first (lib/toolbarfit.ts): the brand is hidden, and
 * buttons move into a "More" menu, where they keep their names, so every control stays
 * reachable. A name too long for what is left is cut with an ellipsis (its tooltip has it whole).
 */

import { type KeyboardEvent, useCallback, useEffect, useLayoutEffect, useRef, useState } from "react";
import type { ExampleRef } from "../api";
import { QUEUE_COUNT_MAX } from "../lib/batch";
import { fileSafeName } from "../lib/filename";
import { collapseToFit, type ToolbarItem } from "../lib/toolbarfit";
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
  /** Whether there is a step to undo / redo (the buttons are disabled without one). */
  canUndo: boolean;
  canRedo: boolean;
  open(): void;
  /** Save the workflow into the server's library (as `name`, a rename not rendered yet, when given). */
  save(name?: string): void;
  /** Download the workflow as a file (what Save did before the library). */
  exportFile(): void;
  exportApi(): void;
  /** Resolves once the example is open (true) or failed (false). */
  openExample(ex: ExampleRef): Promise<boolean>;
  clear(): void;
  refresh(): void;
  keys(): void;
  /** Rename the open document (what Save names its file). */
  rename(name: string): void;
};

/** The longest document name a rename takes (a file name, with its suffix, stays short). */
const NAME_MAX = 120;

/**
 * The document's name, at the right of the toolbar: a click (or Enter on it) edits it in
 * place; Enter or leaving the field keeps the edit, Escape drops it (a newcomer found no way
 * to name a workflow: Save downloaded "txt2img.json" with no say in the name).
 */
function DocName({ name, rename, save, tb }: {
  name: string; rename(name: string): void; save(name?: string): void; tb: string;
}) {
  const [editing, setEditing] = useState(false);
  /** Leave the field, keeping its name or not; the name in use afterwards. */
  const done = (el: HTMLInputElement, keep: boolean): string => {
    const next = fileSafeName(el.value).slice(0, NAME_MAX);
    setEditing(false);
    if (keep && next && next !== name) {
      rename(next);
      return next;
    }
    return name;
  };
  return (
    <span className="sf-docname" data-tb={tb} title={`document name: ${name} (click to rename)`}>
      {editing ? (
        <input aria-label="workflow name" defaultValue={name} maxLength={NAME_MAX} autoFocus
          onFocus={(e) => e.currentTarget.select()}
          onBlur={(e) => done(e.currentTarget, true)}
          onKeyDown={(e) => {
            if (e.key === "Enter") done(e.currentTarget, true);
            else if (e.key === "Escape") { e.stopPropagation(); done(e.currentTarget, false); }
            else if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") {
              // Ctrl+S in the field saves under the name typed (it saved under the old one)
              e.preventDefault();
              e.stopPropagation();
              save(done(e.currentTarget, true));
            }
          }} />
      ) : (
        <button type="button" className="sf-docname-button" aria-label={`workflow name: ${name}, rename`}
          onClick={() => setEditing(true)}><span>{name}</span></button>
      )}
    </span>
  );
}

/**
 * The batch count. The field keeps what is typed: emptying it to type a new count does
 * not put "1" back (which made a typed 3 read 13). The count changes once a whole number
 * from 1 to QUEUE_COUNT_MAX is typed; anything else (empty, 0, 1000) is marked invalid,
 * with the reason in its tooltip, and Queue refuses it rather than queue another count.
 */
function QueueCount({ options }: { options: QueueOptions }) {
  const issue = options.countIssue;
  return (
    <input type="number" className={`sf-queue-count${issue ? " sf-invalid" : ""}`} aria-label="queue count"
      min={1} max={QUEUE_COUNT_MAX} aria-invalid={issue ? true : undefined}
      title={issue
        ? `Invalid: ${issue}`
        : "Batch count: how many prompts Queue adds (seeds set to increment / randomize move on between them)"}
      value={options.countText}
      onBlur={() => {
        if (!issue) options.setCount(options.count); // "007" reads 7 again
      }}
      onChange={(e) => options.setCountText(e.target.value)} />
  );
}

type Action = { key: string; label: string; title: string; onClick(): void; rank: number; disabled?: boolean };

/** The buttons that may move into the More menu; lower ranks move first. */
function collapsible(a: ToolbarActions): Record<string, Action> {
  const list: Action[] = [
    { key: "undo", label: "Undo", title: "Undo (Ctrl+Z)", onClick: a.undo, rank: 5, disabled: !a.canUndo },
    { key: "redo", label: "Redo", title: "Redo (Ctrl+Shift+Z)", onClick: a.redo, rank: 4, disabled: !a.canRedo },
    { key: "open", label: "Open", title: "Open a workflow or a PNG (Ctrl+O)", onClick: a.open, rank: 7 },
    {
      key: "save", label: "Save", onClick: () => a.save(), rank: 6,
      title: "Save the workflow in the Workflows library on the server, under its name (Ctrl+S); ComfyUI's sidebar lists it too",
    },
    {
      key: "exportFile", label: "Export", onClick: () => a.exportFile(), rank: 2.5,
      title: "Download the workflow as a file (Open reads it back)",
    },
    {
      key: "export", label: "Export API", onClick: a.exportApi, rank: 2,
      title: "Download the prompt in API format (what Queue posts to /prompt), for scripts and steerflow run / submit",
    },
    { key: "clear", label: "Clear", title: "Start an empty workflow", onClick: a.clear, rank: 3 },
    { key: "refresh", label: "Refresh", title: "Reload node types and model lists", onClick: a.refresh, rank: 1 },
  ];
  return Object.fromEntries(list.map((it) => [it.key, it]));
}

const BRAND = "brand";
const BRAND_RANK = 0;
const MORE = "more";
const DOC = "doc";
/** The document name keeps at least this much room (px) before buttons leave the row. */
const DOC_ROOM = 100;
/** The More button's width until it has been drawn once. */
const MORE_GUESS = 70;

function outerWidth(el: HTMLElement): number {
  const cs = getComputedStyle(el);
  return el.getBoundingClientRect().width + (parseFloat(cs.marginLeft) || 0) + (parseFloat(cs.marginRight) || 0);
}

/**
 * Which items leave the row: measured from the page when the name or the row changes
 * and when the toolbar is resized. Widths of items out of the row are those they had in it.
 */
function useToolbarFit(ranks: Record<string, number>, docName: string) {
  const header = useRef<HTMLElement>(null);
  const widths = useRef(new Map<string, number>());
  const [out, setOut] = useState<string>("");
  const ranksRef = useRef(ranks);
  ranksRef.current = ranks;

  const measure = useCallback(() => {
    const el = header.current;
    if (!el) return;
    const cs = getComputedStyle(el);
    const available = el.clientWidth - (parseFloat(cs.paddingLeft) || 0) - (parseFloat(cs.paddingRight) || 0);
    const gap = parseFloat(cs.columnGap) || 0;
    const items: ToolbarItem[] = [];
    const seen = new Set<string>();
    for (const child of Array.from(el.children) as HTMLElement[]) {
      const key = child.dataset.tb;
      if (!child.getClientRects().length) continue; // hidden (a phone-sized window hides the brand)
      const position = getComputedStyle(child).position;
      if (position === "fixed" || position === "absolute") continue; // a dialog the toolbar opened
      if (key === MORE) {
        widths.current.set(MORE, outerWidth(child));
      } else if (key === DOC) {
        // the name's own width, not the room it has now (squeezed, it reserved only that)
        const name = child.firstElementChild as HTMLElement | null;
        const text = name ? Math.max(name.getBoundingClientRect().width, name.scrollWidth) : 0;
        items.push({ key: DOC, width: Math.min(Math.ceil(text), DOC_ROOM) });
      } else if (key) {
        widths.current.set(key, outerWidth(child));
        seen.add(key);
      } else {
        items.push({ key: `fixed${items.length}`, width: outerWidth(child) });
      }
    }
    for (const [key, rank] of Object.entries(ranksRef.current)) {
      const width = widths.current.get(key);
      if (width === undefined && !seen.has(key)) continue; // never drawn (hidden by the page's CSS)
      items.push({ key, width: width ?? 0, rank, menu: key !== BRAND });
    }
    const next = collapseToFit({ items, available, gap, more: widths.current.get(MORE) ?? MORE_GUESS }).join(" ");
    setOut((prev) => (prev === next ? prev : next));
  }, []);

  useLayoutEffect(measure, [measure, docName, out]);
  useEffect(() => {
    const el = header.current;
    if (!el || typeof ResizeObserver === "undefined") return;
    let width = el.clientWidth;
    const observer = new ResizeObserver(() => {
      if (el.clientWidth === width) return; // only the width matters
      width = el.clientWidth;
      measure();
    });
    observer.observe(el);
    return () => observer.disconnect();
  }, [measure]);

  return { header, out: new Set(out ? out.split(" ") : []) };
}

/** The More menu: the buttons that left the row, with the names they have in it. */
function MoreMenu({ items }: { items: Action[] }) {
  const [open, setOpen] = useState(false);
  const wrap = useRef<HTMLSpanElement>(null);
  const button = useRef<HTMLButtonElement>(null);
  const list = useRef<HTMLUListElement>(null);

  useEffect(() => {
    if (!open) return;
    list.current?.querySelector<HTMLButtonElement>("button")?.focus();
    const away = (e: MouseEvent) => {
      if (!wrap.current?.contains(e.target as Node)) setOpen(false);
    };
    window.addEventListener("mousedown", away);
    return () => window.removeEventListener("mousedown", away);
  }, [open]);

  const onKey = (e: KeyboardEvent) => {
    const buttons = Array.from(list.current?.querySelectorAll<HTMLButtonElement>("button") ?? []);
    const i = buttons.indexOf(document.activeElement as HTMLButtonElement);
    if (e.key === "Escape") {
      e.stopPropagation();
      setOpen(false);
      button.current?.focus();
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const step = e.key === "ArrowDown" ? 1 : -1;
      buttons[(i + step + buttons.length) % buttons.length]?.focus();
    }
  };

  return (
    <span className="sf-menu" data-tb={MORE} ref={wrap} onKeyDown={onKey}>
      <button type="button" ref={button} aria-haspopup="menu" aria-expanded={open} aria-label="More actions"
        title={`More actions: ${items.map((it) => it.label).join(", ")}`} onClick={() => setOpen((o) => !o)}>
        More ▾
      </button>
      {open && (
        <ul className="sf-menu-list sf-menu-end" role="menu" aria-label="More actions" ref={list}>
          {items.map((it) => (
            <li key={it.key} role="none">
              <button type="button" role="menuitem" title={it.title} disabled={it.disabled} onClick={() => {
                setOpen(false);
                it.onClick();
              }}>{it.label}</button>
            </li>
          ))}
        </ul>
      )}
    </span>
  );
}

export function Toolbar({ a, busy, docName, notify, options }: {
  a: ToolbarActions; busy: boolean; docName: string; notify: Notify; options: QueueOptions;
}) {
  const actions = collapsible(a);
  const ranks: Record<string, number> = { [BRAND]: BRAND_RANK };
  for (const it of Object.values(actions)) ranks[it.key] = it.rank;
  const { header, out } = useToolbarFit(ranks, docName);
  const inRow = (key: string) => {
    const it = actions[key];
    return out.has(key) ? null : (
      <button type="button" data-tb={key} onClick={it.onClick} title={it.title} disabled={it.disabled}>{it.label}</button>
    );
  };
  const inMenu = Object.values(actions).filter((it) => out.has(it.key));
  return (
    <header className="sf-toolbar" ref={header}>
      {!out.has(BRAND) && <strong className="sf-brand" data-tb={BRAND}>Steerflow</strong>}
      <button type="button" className="sf-primary" onClick={a.queue} aria-busy={busy}
        title="Queue the workflow (Ctrl+Enter), as many times as the count beside">Queue</button>
      <QueueCount options={options} />
      <label className="sf-queue-onchange" title="Queue once whenever the graph changes and the queue is empty">
        <input type="checkbox" aria-label="queue on change" checked={options.onChange}
          onChange={(e) => options.setOnChange(e.target.checked)} />
        on change
      </label>
      <button type="button" onClick={a.queueSelected} aria-busy={busy} data-testid="run-selected"
        title="Run only the selected output nodes and what they need">Run selected</button>
      <button type="button" onClick={a.interrupt} title="Interrupt the running prompt">Interrupt</button>
      <span className="sf-sep" />
      <button type="button" onClick={a.addNode} title="Add a node (or double-click the canvas)">Add node</button>
      {inRow("undo")}
      {inRow("redo")}
      <span className="sf-sep" />
      {inRow("open")}
      {inRow("save")}
      {inRow("exportFile")}
      {inRow("export")}
      <ExamplesBrowser onOpen={a.openExample} notify={notify} />
      {inRow("clear")}
      {inRow("refresh")}
      <button type="button" onClick={a.keys} aria-label="keyboard shortcuts"
        title="Keyboard shortcuts and mouse gestures (?)">?</button>
      {inMenu.length > 0 && <MoreMenu items={inMenu} />}
      <DocName name={docName} rename={a.rename} save={a.save} tb={DOC} />
    </header>
  );
}
