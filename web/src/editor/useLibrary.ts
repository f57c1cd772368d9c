/**
 * The workflow library's actions (lib/library.ts): Save into it (Ctrl+S), open, rename and
 * delete its workflows. The Workflows tab (panels/WorkflowsTab.tsx) lists it.
 *
 * Save writes `workflows/<name>.json` in ComfyUI's UI format (the server's
 * `/workflow/export`), with our document kept inside. The graph's own file (opened from the
 * library or saved last, in whatever folder) is saved over at once; a new name given to it
 * renames that file first (in its folder), as ComfyUI renames a saved workflow. It never
 * overwrites another workflow unasked: a new file is written with `overwrite=false`, a rename
 * moved with it too, and a 409 asks first. Nothing here ever changes the graph on the canvas
 * when it fails; every failure says why.
 */

import { type MutableRefObject, useCallback, useMemo, useRef, useState } from "react";
import {
  ApiError, deleteUserFile, exportComfyWorkflow, moveUserFile, writeUserFile,
} from "../api";
import { isNetworkError } from "../lib/errors";
import { exactPrompt, stringifyJsonExact } from "../lib/exactint";
import { fileSafeName } from "../lib/filename";
import type { WorkflowDocument } from "../lib/graph";
import {
  checkName, type Failure, failureText, type LibraryEntry, nameOfPath, saveTarget, siblingPath, userPath, withDocument,
} from "../lib/library";
import type { Defs } from "../lib/schema";
import type { Notify } from "./Toasts";

/**
 * A question the library asks (replace an existing workflow, delete one, the name of one
 * never named), while asked. `name`: it asks for a name, starting from this one.
 */
export type LibraryQuestion = { title: string; message: string; confirm: string; name?: string; run(name?: string): void };

/** The name of a graph nobody named (a new or cleared canvas): its first Save asks for one. */
export const UNNAMED = "workflow";

export type LibraryApi = {
  /** Bumped after each change made here: the Workflows tab lists again. */
  version: number;
  /** The library file (path under workflows/) the graph on the canvas was opened from or saved as. */
  currentPath(): string | null;
  save(as?: string): Promise<void>;
  rename(entry: LibraryEntry, typed: string): Promise<boolean>;
  remove(entry: LibraryEntry): void;
  question: LibraryQuestion | null;
  answer(yes: boolean, name?: string): void;
  /** List the library again (a file found gone). */
  refresh(): void;
};

/** A thrown request error as lib/library.ts's failureText reads it. */
export function failureOf(e: unknown): Failure {
  if (e instanceof ApiError) {
    const err = (e.body as { error?: { type?: unknown } } | null)?.error;
    return { status: e.status, message: e.message, type: typeof err?.type === "string" ? err.type : undefined };
  }
  if (isNetworkError(e)) return { network: true, message: (e as Error).message };
  return { message: e instanceof Error ? e.message : String(e) };
}

/** The library file of the graph on the canvas, kept by the editor per undo step (useGraphStore's `library`). */
export type GraphFile = {
  current(): string | null;
  /** The graph was saved as `path`. */
  set(path: string | null): void;
  /** A file was renamed (or deleted: null). */
  moved(from: string, to: string | null): void;
};

export function useLibrary({ docName, rename: renameDoc, graphDocument, defsRef, notify, file, shownFile }: {
  docName: string;
  rename(name: string): void;
  graphDocument(): WorkflowDocument;
  defsRef: MutableRefObject<Defs>;
  notify: Notify;
  /** Set when a workflow opens from the library, cleared when any other graph opens, back with its graph on an undo. */
  file: GraphFile;
  /** `file.current()` as state: the Workflows tab's mark follows it. */
  shownFile: string | null;
}): LibraryApi {
  const [version, setVersion] = useState(0);
  const [question, setQuestion] = useState<LibraryQuestion | null>(null);
  const saving = useRef(false);
  const changed = useCallback(() => setVersion((v) => v + 1), []);

  const save = useCallback(async (as?: string) => {
    if (as === undefined && file.current() === null && (docName || UNNAMED) === UNNAMED) {
      // ComfyUI asks "Save workflow as" for a graph never saved: a silent workflow.json
      // would end up holding every unnamed graph in turn
      setQuestion({
        title: "Save workflow as", confirm: "Save", name: UNNAMED,
        message: "The name of the workflow in the library (Workflows tab; ComfyUI's workflows too):",
        run: (name) => void save(name ?? UNNAMED),
      });
      return;
    }
    const checked = checkName(fileSafeName(as ?? docName) || "workflow");
    if ("error" in checked) {
      notify(`Not saved: ${checked.error}`, "error");
      return;
    }
    if (saving.current) return; // one save at a time (a held Ctrl+S)
    saving.current = true;
    // the graph's own file, in its folder (proj/sub.json stays there); a new name renames it
    const { path, renameFrom: from } = saveTarget(file.current(), checked.file);
    const what = `Cannot save ${path} to the library`;
    try {
      const doc = graphDocument();
      let text: string;
      try {
        // ComfyUI's format, by the server's converter (the PNGs' `workflow`), seeds exact
        const { workflow } = await exportComfyWorkflow({ ...doc, prompt: exactPrompt(doc.prompt, defsRef.current) });
        text = stringifyJsonExact(withDocument(workflow, doc), 2);
      } catch (e) {
        notify(failureText(what, failureOf(e), true), "error");
        return;
      }
      const write = async (overwrite: boolean, renamed = false): Promise<"ok" | "exists" | "failed"> => {
        try {
          await writeUserFile(userPath(path), text, overwrite);
        } catch (e) {
          const f = failureOf(e);
          if (!overwrite && f.status === 409 && f.type === "file_exists") return "exists";
          notify(failureText(what, f, true), "error");
          return "failed";
        }
        file.set(path);
        if (checked.name !== docName) renameDoc(checked.name);
        changed();
        notify(`Saved ${path} to the Workflows library (${renamed ? `renamed from ${from}; ` : ""}`
          + "Export downloads it as a file)", "info", undefined, { tag: "saved" });
        return "ok";
      };
      const replace = (run: () => void) => setQuestion({
        title: `Replace ${path}?`,
        message: `A workflow named “${checked.name}” is already in the library. Replace it with the graph on the canvas? `
          + (from ? `(${from} is renamed to it.) ` : "")
          + "(Cancel keeps both: rename this workflow first, by its name at the top right.)",
        confirm: "Replace",
        run,
      });
      // a new name for the graph's file: the file is renamed (moved), then written
      const move = async (overwrite: boolean): Promise<"ok" | "exists" | "gone" | "failed"> => {
        try {
          await moveUserFile(userPath(from!), userPath(path), overwrite);
        } catch (e) {
          const f = failureOf(e);
          if (!overwrite && f.status === 409) return "exists";
          if (f.status === 404) return "gone"; // deleted or renamed elsewhere: a new file
          notify(failureText(`Cannot rename ${from} to ${path}`, f, true), "error");
          return "failed";
        }
        file.moved(from!, path);
        changed();
        return "ok";
      };
      const moveAndWrite = async (overwrite: boolean) => {
        const moved = await move(overwrite);
        if (moved === "ok") await write(true, true);
        else if (moved === "gone" && await write(overwrite) === "exists") replace(() => void write(true));
        else if (moved === "exists") replace(() => void moveAndWrite(true));
      };
      if (from) await moveAndWrite(false);
      // the graph's own file is saved over; any other asks first
      else if (await write(file.current() === path) === "exists") replace(() => void write(true));
    } finally {
      saving.current = false;
    }
  }, [docName, renameDoc, graphDocument, defsRef, notify, file, changed]);

  const rename = useCallback(async (entry: LibraryEntry, typed: string): Promise<boolean> => {
    const checked = checkName(typed);
    if ("error" in checked) {
      notify(`Not renamed: ${checked.error}`, "error");
      return false;
    }
    const dest = siblingPath(entry.path, checked.file);
    if (dest === entry.path) return true;
    try {
      await moveUserFile(userPath(entry.path), userPath(dest));
    } catch (e) {
      const f = failureOf(e);
      notify(f.status === 409
        ? `Not renamed: a workflow named “${checked.name}” is already in the library (delete or rename that one first)`
        : failureText(`Cannot rename ${entry.label}`, f), "error");
      if (f.status === 404) changed();
      return false;
    }
    // the graph on the canvas follows its file, as in ComfyUI (and so do the undo steps of it)
    if (file.current() === entry.path) renameDoc(nameOfPath(dest));
    file.moved(entry.path, dest);
    changed();
    notify(`Renamed ${entry.label} to ${dest.replace(/\.json$/i, "")}`, "info", undefined, { tag: "library" });
    return true;
  }, [notify, file, renameDoc, changed]);

  const remove = useCallback((entry: LibraryEntry) => {
    setQuestion({
      title: `Delete ${entry.label}?`,
      message: `This deletes “${entry.path}” from the workflow library on the server, for every browser and for ComfyUI's `
        + "front end too. The graph on the canvas stays as it is.",
      confirm: "Delete",
      run: () => void deleteUserFile(userPath(entry.path)).then(() => {
        file.moved(entry.path, null);
        changed();
        notify(`Deleted ${entry.label} from the library`, "info", undefined, { tag: "library" });
      }, (e: unknown) => {
        const f = failureOf(e);
        if (f.status === 404) changed();
        notify(failureText(`Cannot delete ${entry.label}`, f), "error");
      }),
    });
  }, [notify, file, changed]);

  const answer = useCallback((yes: boolean, name?: string) => {
    setQuestion(null);
    if (yes) question?.run(name);
  }, [question]);

  // a new function when the file changes (an Open, an undo of one): the tab's mark follows
  const currentPath = useCallback(() => file.current(), [file, shownFile]);
  return useMemo(() => ({ version, currentPath, save, rename, remove, question, answer, refresh: changed }),
    [version, currentPath, save, rename, remove, question, answer, changed]);
}
