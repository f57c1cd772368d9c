/**
 * The workflow library's actions (lib/library.ts): Save into it (Ctrl+S), open, rename and
 * delete its workflows. The Workflows tab (panels/WorkflowsTab.tsx) lists it.
 *
 * Save writes `workflows/<name>.json` in ComfyUI's UI format (the server's
 * `/workflow/export`), with our document kept inside. It never overwrites another workflow
 * unasked: the file the canvas opened from the library (or saved last) is saved over at
 * once, any other name is written with `overwrite=false` and a 409 asks first. Nothing here
 * ever changes the graph on the canvas when it fails; every failure says why.
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
  checkName, type Failure, failureText, type LibraryEntry, nameOfPath, siblingPath, userPath, withDocument,
} from "../lib/library";
import type { Defs } from "../lib/schema";
import type { Notify } from "./Toasts";

/** A question the library asks (replace an existing workflow, delete one), while asked. */
export type LibraryQuestion = { title: string; message: string; confirm: string; run(): void };

export type LibraryApi = {
  /** Bumped after each change made here: the Workflows tab lists again. */
  version: number;
  /** The library file (path under workflows/) the graph on the canvas was opened from or saved as. */
  currentPath(): string | null;
  save(as?: string): Promise<void>;
  rename(entry: LibraryEntry, typed: string): Promise<boolean>;
  remove(entry: LibraryEntry): void;
  question: LibraryQuestion | null;
  answer(yes: boolean): void;
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

export function useLibrary({ docName, rename: renameDoc, graphDocument, defsRef, notify, openedPath }: {
  docName: string;
  rename(name: string): void;
  graphDocument(): WorkflowDocument;
  defsRef: MutableRefObject<Defs>;
  notify: Notify;
  /** Shared with the editor: set when a workflow opens from the library, cleared when any other graph opens. */
  openedPath: MutableRefObject<string | null>;
}): LibraryApi {
  const [version, setVersion] = useState(0);
  const [question, setQuestion] = useState<LibraryQuestion | null>(null);
  const saving = useRef(false);
  const changed = useCallback(() => setVersion((v) => v + 1), []);

  const save = useCallback(async (as?: string) => {
    const checked = checkName(fileSafeName(as ?? docName) || "workflow");
    if ("error" in checked) {
      notify(`Not saved: ${checked.error}`, "error");
      return;
    }
    if (saving.current) return; // one save at a time (a held Ctrl+S)
    saving.current = true;
    const path = checked.file;
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
      const done = () => {
        openedPath.current = path;
        if (checked.name !== docName) renameDoc(checked.name);
        changed();
        notify(`Saved ${path} to the Workflows library (Export downloads it as a file)`, "info", undefined, { tag: "saved" });
      };
      const write = async (overwrite: boolean): Promise<"ok" | "exists" | "failed"> => {
        try {
          await writeUserFile(userPath(path), text, overwrite);
          done();
          return "ok";
        } catch (e) {
          const f = failureOf(e);
          if (!overwrite && f.status === 409 && f.type === "file_exists") return "exists";
          notify(failureText(what, f, true), "error");
          return "failed";
        }
      };
      // the workflow opened from (or saved as) this very file is saved over; any other asks first
      if (await write(openedPath.current === path) === "exists") {
        setQuestion({
          title: `Replace ${path}?`,
          message: `A workflow named “${checked.name}” is already in the library. Replace it with the graph on the canvas? `
            + "(Cancel keeps both: rename this workflow first, by its name at the top right.)",
          confirm: "Replace",
          run: () => void write(true),
        });
      }
    } finally {
      saving.current = false;
    }
  }, [docName, renameDoc, graphDocument, defsRef, notify, openedPath, changed]);

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
    if (openedPath.current === entry.path) { // the graph on the canvas follows its file, as in ComfyUI
      openedPath.current = dest;
      renameDoc(nameOfPath(dest));
    }
    changed();
    notify(`Renamed ${entry.label} to ${dest.replace(/\.json$/i, "")}`, "info", undefined, { tag: "library" });
    return true;
  }, [notify, openedPath, renameDoc, changed]);

  const remove = useCallback((entry: LibraryEntry) => {
    setQuestion({
      title: `Delete ${entry.label}?`,
      message: `This deletes “${entry.path}” from the workflow library on the server, for every browser and for ComfyUI's `
        + "front end too. The graph on the canvas stays as it is.",
      confirm: "Delete",
      run: () => void deleteUserFile(userPath(entry.path)).then(() => {
        if (openedPath.current === entry.path) openedPath.current = null;
        changed();
        notify(`Deleted ${entry.label} from the library`, "info", undefined, { tag: "library" });
      }, (e: unknown) => {
        const f = failureOf(e);
        if (f.status === 404) changed();
        notify(failureText(`Cannot delete ${entry.label}`, f), "error");
      }),
    });
  }, [notify, openedPath, changed]);

  const answer = useCallback((yes: boolean) => {
    setQuestion(null);
    if (yes) question?.run();
  }, [question]);

  const currentPath = useCallback(() => openedPath.current, [openedPath]);
  return useMemo(() => ({ version, currentPath, save, rename, remove, question, answer, refresh: changed }),
    [version, currentPath, save, rename, remove, question, answer, changed]);
}
