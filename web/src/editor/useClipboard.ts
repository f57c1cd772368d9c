/**
 * Ctrl+V with the system clipboard, as in ComfyUI: an image goes to a Load Image node (the
 * selected one, else a new one at the pointer) or opens the workflow it carries, as a
 * dropped image does; a workflow's JSON text opens, as a dropped .json does; nodes copied on
 * the canvas are pasted as before. Ctrl+C puts copied nodes on the system clipboard too, so
 * that the newest copy wins over an image copied before.
 */

import { useCallback, useEffect, useRef } from "react";
import { clipText, readPasted } from "../lib/clipboard";
import { maskEditorOpen } from "./maskEditorState";
import { isTextEntry } from "./useShortcuts";

/** How long Ctrl+V waits for its paste event before pasting the canvas's own clipboard (a browser that sent none). */
const PASTE_EVENT_WAIT_MS = 150;

export type ClipboardActions = {
  /** Whether a dialog, a menu or an opening workflow has the keyboard. */
  paused(): boolean;
  /** The nodes the Ctrl+C being handled copied, taken once. */
  takeCopied(): object | null;
  /** Paste the canvas's own clipboard (the nodes copied last). */
  pasteNodes(): void;
  pasteClip(clip: unknown): void;
  pasteImage(file: File): void;
  openWorkflow(workflow: unknown): void;
};

/** Returns the Ctrl+V key's action: it waits for the paste event, which does the paste. */
export function useClipboard(a: ClipboardActions): () => void {
  const actions = useRef(a);
  actions.current = a;
  const waiting = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => {
    const onCopy = (e: ClipboardEvent) => {
      const clip = actions.current.takeCopied();
      // selected text (a label) is copied as text, as the browser does
      if (!clip || !e.clipboardData || (window.getSelection()?.toString() ?? "") !== "") return;
      e.clipboardData.setData("text/plain", clipText(clip));
      e.preventDefault();
    };
    const onPaste = (e: ClipboardEvent) => {
      // a text field takes its own paste; the mask editor has the keyboard
      if (isTextEntry(e.target) || maskEditorOpen() || actions.current.paused() || !e.clipboardData) return;
      if (waiting.current) clearTimeout(waiting.current);
      waiting.current = null;
      e.preventDefault();
      const got = readPasted([...e.clipboardData.files], e.clipboardData.getData("text/plain"));
      const act = actions.current;
      if (got.kind === "image") act.pasteImage(got.file);
      else if (got.kind === "workflow") act.openWorkflow(got.workflow);
      else if (got.kind === "clip") act.pasteClip(got.clip);
      else act.pasteNodes();
    };
    document.addEventListener("copy", onCopy);
    document.addEventListener("paste", onPaste);
    return () => {
      document.removeEventListener("copy", onCopy);
      document.removeEventListener("paste", onPaste);
      if (waiting.current) clearTimeout(waiting.current);
    };
  }, []);
  return useCallback(() => {
    if (waiting.current) clearTimeout(waiting.current);
    waiting.current = setTimeout(() => {
      waiting.current = null;
      actions.current.pasteNodes();
    }, PASTE_EVENT_WAIT_MS);
  }, []);
}
