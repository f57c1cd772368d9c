/**
 * The node palette: search node types by name and category. Opened from the
 * toolbar, by double-clicking the canvas, or by dropping a dragged link on
 * empty space (then it lists only nodes that fit the link's type).
 */

import { useEffect, useMemo, useRef, useState } from "react";
import type { Defs } from "../lib/schema";
import { VIRTUAL_DEFS } from "../lib/reroute";
import { popularity, searchDefs } from "../lib/search";
import { type Point, pointerMoved } from "../lib/hover";
import { useFocusTrap } from "../editor/useFocusTrap";
import { useReturnFocus } from "../editor/useReturnFocus";

/**
 * What a dropped link fits: node type → the input (or output) it would link to; `last`: the
 * types it fits only through a list of choices (lib/types.ts Compatible.choice), listed last.
 */
export type PaletteFilter = { label: string; types: Map<string, string>; last?: Set<string>; first?: Set<string> };

/** The heading over the nodes a dropped link fits only through a list of choices. */
const CHOICE_GROUP = "Lists of choices (the text must be one of them)";
/** For a link dropped from an input: the nodes that take that type too (a sampler), after the sources. */
const TAKERS_GROUP = "Nodes that also take one";

export function Palette({ defs, filter, onPick, onClose, at }: {
  defs: Defs;
  filter?: PaletteFilter;
  at?: { x: number; y: number };
  onPick(type: string): void;
  onClose(): void;
}) {
  const [query, setQuery] = useState("");
  const [active, setActive] = useState(0);
  const inputRef = useRef<HTMLInputElement>(null);
  const listRef = useRef<HTMLUListElement>(null);
  const box = useRef<HTMLDivElement>(null);
  useReturnFocus(true, box); // Escape or a pick gives the focus back to what opened it
  useFocusTrap(box); // Tab stays in the palette while it is open
  /** Where the pointer was last seen over the list (first: where the palette opened, the pointer's place). */
  const pointer = useRef<Point | null>(at ?? null);
  const only = useMemo(() => (filter ? new Set(filter.types.keys()) : undefined), [filter]);
  // the registry's nodes and the canvas-only ones (reroute, note)
  const all = useMemo(() => new Map([...defs, ...VIRTUAL_DEFS.map((d) => [d.type, d] as const)]), [defs]);
  const results = useMemo(() => searchDefs(all, query, only, filter?.last, filter?.first).slice(0, 300), [all, query, only, filter]);

  useEffect(() => inputRef.current?.focus(), []);
  useEffect(() => setActive(0), [query]);
  useEffect(() => {
    listRef.current?.querySelector(`[data-index="${active}"]`)?.scrollIntoView({ block: "nearest" });
  }, [active]);

  const style = at
    // on a narrow window the box shrinks to it (styles.css) and stays 8 px inside it
    ? { left: Math.max(8, Math.min(at.x, window.innerWidth - 388)), top: Math.max(8, Math.min(at.y, window.innerHeight - 448)) }
    : undefined;

  let lastCategory = "";
  return (
    <div className="sf-palette-backdrop" onMouseDown={onClose}>
      <div
        ref={box}
        className={`sf-palette${at ? " sf-palette-at" : ""}`}
        style={style}
        role="dialog"
        aria-label="Add node"
        onMouseDown={(e) => e.stopPropagation()}
      >
        <input
          ref={inputRef}
          className="sf-palette-search"
          placeholder={filter ? `Search nodes for ${filter.label}…` : "Search nodes by name or category…"}
          aria-label="Search nodes"
          // a combobox: a screen reader reads the highlighted node as the arrows move
          role="combobox"
          aria-expanded={true}
          aria-controls="sf-palette-list"
          aria-autocomplete="list"
          aria-activedescendant={results[active] ? `sf-palette-option-${active}` : undefined}
          value={query}
          onChange={(e) => setQuery(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "ArrowDown") {
              e.preventDefault();
              setActive((a) => Math.min(results.length - 1, a + 1));
            } else if (e.key === "ArrowUp") {
              e.preventDefault();
              setActive((a) => Math.max(0, a - 1));
            } else if (e.key === "Enter") {
              e.preventDefault();
              if (results[active]) onPick(results[active].type);
            } else if (e.key === "Escape") {
              onClose();
            }
          }}
        />
        {filter && <div className="sf-palette-filter">Nodes that fit {filter.label}</div>}
        <ul ref={listRef} id="sf-palette-list" className="sf-palette-list" role="listbox" aria-label="Nodes">
          {results.length === 0 && <li className="sf-palette-empty">No matching node</li>}
          {results.map((d, i) => {
            // filtered to a dropped link, the most used nodes come first, under their own heading
            // and the nodes it fits only through a list of choices come last, under theirs
            const group = filter?.last?.has(d.type) ? CHOICE_GROUP
              : filter?.first && !filter.first.has(d.type) ? TAKERS_GROUP
              : filter && popularity(d.type) > 0 ? "Most used" : d.category;
            const header = !query && group !== lastCategory ? group : null;
            lastCategory = group;
            return (
              <li key={d.type} role="presentation">
                {header && <div className="sf-palette-category">{header}</div>}
                <div
                  role="option"
                  id={`sf-palette-option-${i}`}
                  aria-selected={i === active}
                  data-index={i}
                  data-type={d.type}
                  className={`sf-palette-item${i === active ? " active" : ""}`}
                  // only a real move selects the row under the pointer: the list opens under
                  // a still pointer (a dropped link), and Enter must add the first entry
                  onMouseMove={(e) => {
                    if (pointerMoved(pointer.current, e.clientX, e.clientY) && i !== active) setActive(i);
                    pointer.current = { x: e.clientX, y: e.clientY };
                  }}
                  onClick={() => onPick(d.type)}
                  title={d.description}
                >
                  <span className="sf-palette-name">{d.displayName}</span>
                  <span className="sf-palette-cat">
                    {filter?.types.get(d.type) ? `${filter.types.get(d.type)} · ` : ""}
                    {d.category}
                  </span>
                </div>
              </li>
            );
          })}
        </ul>
      </div>
    </div>
  );
}
