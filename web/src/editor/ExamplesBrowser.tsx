/**
 * The examples browser: a dialog with one card per example workflow of the server
 * (`/workflows?details=1`): its title, what it shows (the description, true for the
 * shipped model), a thumbnail of what it makes as shipped (a placeholder where none
 * ships) and the models it needs beyond the built-in ones. A click anywhere on a card
 * opens it (as ComfyUI's template browser): the whole card is one button.
 */

import { useCallback, useEffect, useId, useMemo, useRef, useState } from "react";
import { type ExampleInfo, type ExampleRef, listExamples } from "../api";
import { byTitle, matchesQuery } from "../lib/examples";
import type { Notify } from "./Toasts";
import { useFocusTrap } from "./useFocusTrap";
import { useReturnFocus } from "./useReturnFocus";

function Card({ ex, onOpen, opening }: { ex: ExampleInfo; onOpen(ex: ExampleInfo): void; opening: boolean }) {
  const [broken, setBroken] = useState(false);
  const id = useId();
  // a button holds phrasing content only: the card's parts are spans laid out as blocks; its
  // name is the title, its description what the card says (a screen reader reads both)
  return (
    <li className={`sf-example-card${opening ? " sf-example-opening" : ""}`} data-example={ex.name}>
      <button type="button" className="sf-example-open" aria-label={`Open ${ex.title}`} onClick={() => onOpen(ex)}
        aria-describedby={`${id}-description${ex.requiresModels.length ? ` ${id}-needs` : ""}`}
        aria-busy={opening || undefined}>
        {ex.thumbnail && !broken ? (
          <img className="sf-example-thumb" src={ex.thumbnail} alt={`what ${ex.title} makes`} loading="lazy"
            onError={() => setBroken(true)} />
        ) : (
          <span className="sf-example-thumb sf-example-placeholder" data-testid="thumbnail-placeholder">
            {ex.requiresModels.length ? "needs models" : "no preview"}
          </span>
        )}
        <span className="sf-example-text">
          <span className="sf-example-title">{ex.title}</span>
          <span className="sf-example-description" id={`${id}-description`} title={ex.description}>
            {ex.description || "No description."}
          </span>
          {ex.requiresModels.length > 0 && (
            <span className="sf-example-needs" id={`${id}-needs`}>Needs: {ex.requiresModels.join(", ")}</span>
          )}
          <span className="sf-muted sf-example-file">{ex.name}</span>
        </span>
      </button>
    </li>
  );
}

/**
 * `onOpen` resolves once the picked example is on the canvas (true) or could not be opened
 * (false, the error told). Until then the dialog stays open, saying what it opens: closing it
 * at once (as before) left the old graph editable while the example loaded, and an edit or a
 * Queue made then went to the old graph, which the example then replaced.
 */
export function ExamplesBrowser({ onOpen, notify }: { onOpen(ex: ExampleRef): Promise<boolean>; notify: Notify }) {
  const [examples, setExamples] = useState<ExampleInfo[] | null>(null);
  const [open, setOpen] = useState(false);
  const [query, setQuery] = useState("");
  /** The example being opened (its name), while it loads. */
  const [opening, setOpening] = useState<string | null>(null);
  const search = useRef<HTMLInputElement>(null);
  const box = useRef<HTMLDivElement>(null);
  // closed (Escape, ✕, a click outside, an example picked): the focus goes back to the Examples button
  useReturnFocus(open, box);
  // modal: Tab and Shift+Tab go round its controls, never to the toolbar behind it
  useFocusTrap(box, open);

  const show = useCallback(async () => {
    setOpen(true);
    setQuery("");
    try {
      setExamples(await listExamples());
    } catch (e) {
      setOpen(false);
      notify(`Cannot list examples: ${(e as Error).message}`, "error");
    }
  }, [notify]);

  useEffect(() => {
    if (!open) return;
    search.current?.focus();
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape") setOpen(false);
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [open]);

  const shown = useMemo(() => byTitle(examples ?? []).filter((ex) => matchesQuery(ex, query)), [examples, query]);
  const pick = async (ex: ExampleInfo) => {
    if (opening) return; // one at a time: the one loading is said in the header
    setOpening(ex.name);
    const ok = await onOpen(ex);
    setOpening(null);
    if (ok) setOpen(false); // else the error is told and another can be picked
  };
  const openingTitle = opening ? (examples?.find((ex) => ex.name === opening)?.title ?? opening) : null;

  return (
    <>
      <button type="button" onClick={() => void show()} title="Browse the example workflows">Examples</button>
      {open && (
        <div className="sf-examples-backdrop" onMouseDown={(e) => e.target === e.currentTarget && setOpen(false)}>
          <div className="sf-examples" role="dialog" aria-label="Examples" aria-modal="true" ref={box}
            aria-busy={opening ? true : undefined}>
            <div className="sf-examples-head">
              <strong>Examples</strong>
              <input ref={search} type="search" aria-label="Search examples" placeholder="Search title or description"
                value={query} onChange={(e) => setQuery(e.target.value)}
                onKeyDown={(e) => {
                  // Enter opens the first match; the arrow down goes into the cards
                  if (e.key === "Enter" && shown.length) void pick(shown[0]);
                  if (e.key === "ArrowDown" && shown.length) {
                    e.preventDefault();
                    box.current?.querySelector<HTMLButtonElement>(".sf-example-open")?.focus();
                  }
                }} />
              <span className="sf-muted" role="status" data-testid="examples-status">
                {openingTitle ? `Opening ${openingTitle}…` : examples ? `${shown.length} of ${examples.length}` : "loading…"}
              </span>
              <button type="button" className="sf-small" onClick={() => setOpen(false)} aria-label="Close examples">✕</button>
            </div>
            <ul className="sf-examples-grid" aria-label="example workflows">
              {examples?.length === 0 && <li className="sf-muted">This server offers no examples.</li>}
              {shown.map((ex) => <Card key={ex.name} ex={ex} onOpen={(e) => void pick(e)} opening={opening === ex.name} />)}
            </ul>
          </div>
        </div>
      )}
    </>
  );
}
