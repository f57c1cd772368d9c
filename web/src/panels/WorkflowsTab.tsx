/**
 * The Workflows tab: the workflow library on the server (`workflows/` of the user's files,
 * shared with ComfyUI's own workflow sidebar), newest first or by name, with Open, Rename
 * and Delete. Save (Ctrl+S) writes into it (editor/useLibrary.ts).
 */

import { useCallback, useEffect, useMemo, useState } from "react";
import { listLibrary } from "../api";
import { failureOf, type LibraryApi } from "../editor/useLibrary";
import {
  checkName, failureText, filterEntries, type LibraryEntry, type LibrarySort, parseListing, sortEntries, whenText,
} from "../lib/library";

/** The chosen order, kept in localStorage. */
const SORT_KEY = "steerflow.library.sort";

function readSort(): LibrarySort {
  try {
    return localStorage.getItem(SORT_KEY) === "name" ? "name" : "newest";
  } catch {
    return "newest";
  }
}

/** Ctrl+S (Cmd+S): in the tab's fields it saves the workflow, as in every other text field (not the browser's Save page). */
const isSaveKey = (e: React.KeyboardEvent) => (e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === "s";

function RenameField({ entry, onDone }: { entry: LibraryEntry; onDone(typed: string | null, thenSave?: boolean): void }) {
  return (
    <input aria-label={`new name for ${entry.label}`} defaultValue={entry.name} autoFocus className="sf-library-rename"
      onFocus={(e) => e.currentTarget.select()}
      onBlur={(e) => onDone(e.currentTarget.value)}
      onKeyDown={(e) => {
        e.stopPropagation(); // the canvas's keys (Delete, Ctrl+Z...) stay out of the field
        if (e.key === "Enter") e.currentTarget.blur();
        else if (e.key === "Escape") onDone(null);
        else if (isSaveKey(e)) {
          e.preventDefault(); // the rename typed is made, then the workflow saved
          onDone(e.currentTarget.value, true);
        }
      }} />
  );
}

export function WorkflowsTab({ library, open }: {
  library: LibraryApi;
  /** Open a library file (its entry); resolves once open or failed (said so). */
  open(entry: LibraryEntry): Promise<boolean>;
}) {
  const [entries, setEntries] = useState<LibraryEntry[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sort, setSort] = useState<LibrarySort>(readSort);
  const [filter, setFilter] = useState("");
  const [renaming, setRenaming] = useState<string | null>(null);
  const [reloads, setReloads] = useState(0);
  const reload = useCallback(() => setReloads((n) => n + 1), []);

  useEffect(() => {
    let live = true;
    listLibrary().then((body) => {
      if (!live) return;
      setEntries(parseListing(body));
      setError(null);
    }, (e: unknown) => {
      if (live) setError(failureText("Cannot list the workflow library", failureOf(e)));
    });
    return () => { live = false; };
  }, [library.version, reloads]);

  const shown = useMemo(() => sortEntries(filterEntries(entries ?? [], filter), sort), [entries, filter, sort]);
  const current = library.currentPath();
  const pickSort = (next: LibrarySort) => {
    setSort(next);
    try {
      localStorage.setItem(SORT_KEY, next);
    } catch {
      // not remembered
    }
  };

  return (
    <div className="sf-tab sf-library" aria-label="workflow library">
      <div className="sf-tab-actions sf-library-bar">
        <input type="search" placeholder="Filter" aria-label="filter workflows" value={filter}
          onChange={(e) => setFilter(e.target.value)} onKeyDown={(e) => {
            e.stopPropagation(); // the canvas's keys stay out of the field
            if (isSaveKey(e)) {
              e.preventDefault();
              void library.save();
            }
          }} />
        <select aria-label="sort workflows" value={sort} onChange={(e) => pickSort(e.target.value as LibrarySort)}>
          <option value="newest">Newest first</option>
          <option value="name">By name</option>
        </select>
        <button type="button" className="sf-small" onClick={reload} title="List the library again">Refresh</button>
      </div>
      {error && <div className="sf-library-error" role="alert">{error}</div>}
      {entries && entries.length === 0 && !error && (
        <div className="sf-muted">
          No saved workflows yet. Save (Ctrl+S) keeps the graph here on the server, under its name (click the name at the
          top right to rename it); ComfyUI's own workflow sidebar lists the same files.
        </div>
      )}
      {entries && entries.length > 0 && shown.length === 0 && <div className="sf-muted">No workflow matches “{filter}”.</div>}
      {entries === null && !error && <div className="sf-muted">Listing the library…</div>}
      <ul className="sf-list" aria-label="saved workflows">
        {shown.map((entry) => (
          <li key={entry.path} className={`sf-saved-graph sf-library-item${entry.path === current ? " sf-current" : ""}`}
            data-path={entry.path}>
            {renaming === entry.path ? (
              <RenameField entry={entry} onDone={(typed, thenSave) => {
                setRenaming(null);
                const renaming = typed !== null && typed.trim() !== entry.name;
                const renamed = renaming ? library.rename(entry, typed) : Promise.resolve(false);
                if (!thenSave) return;
                // the graph renamed with its file is saved under its new name (this render's save knows the old one)
                const name = typed !== null ? checkName(typed) : null;
                void renamed.then((ok) => library.save(ok && entry.path === current && name && "name" in name ? name.name : undefined));
              }} />
            ) : (
              <button type="button" className="sf-library-name" title={`Open ${entry.path}`}
                onClick={() => void open(entry)}>
                {entry.label}
              </button>
            )}
            <div className="sf-library-row">
              <span className="sf-muted" title={entry.modified ? new Date(entry.modified).toLocaleString() : undefined}>
                {entry.path === current ? "open · " : ""}{whenText(entry.modified)}
              </span>
              <span className="sf-queue-actions">
                <button type="button" className="sf-small" aria-label={`Open ${entry.label}`} onClick={() => void open(entry)}>Open</button>
                <button type="button" className="sf-small" aria-label={`Rename ${entry.label}`}
                  onClick={() => setRenaming(entry.path)}>Rename</button>
                <button type="button" className="sf-small" aria-label={`Delete ${entry.label}`}
                  onClick={() => library.remove(entry)}>Delete</button>
              </span>
            </div>
          </li>
        ))}
      </ul>
    </div>
  );
}
