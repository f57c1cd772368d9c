/** The editor's keyboard shortcuts (ComfyUI's where it has one). */

import { useEffect } from "react";
import type { NodeMode } from "../lib/graph";

/** Every key the canvas answers to, as the "?" list shows it (keep in step with the handlers). */
export const SHORTCUTS: readonly (readonly [keys: string, action: string])[] = [
  ["Ctrl+Enter", "Queue the workflow"],
  ["Ctrl+S / Ctrl+O", "Save / open a workflow file"],
  ["Ctrl+Z / Ctrl+Y (Ctrl+Shift+Z)", "Undo / redo"],
  ["Ctrl+C / Ctrl+V", "Copy / paste the selected nodes"],
  ["Ctrl+Shift+V", "Paste, keeping the links into the pasted nodes"],
  ["Ctrl+A", "Select every node"],
  ["Ctrl+G", "Group the selected nodes"],
  ["Ctrl+M / Ctrl+B", "Mute / bypass the selected nodes"],
  ["Delete / Backspace", "Delete the selection"],
  ["Double-click the canvas", "Add a node (search by name)"],
  ["Drag a link onto empty canvas", "Add a node that takes it"],
  ["Drag a linked input's dot", "Move or detach its link"],
  ["Shift+drag", "Select a box of nodes"],
  ["Right-click", "Menu of the canvas, a node or a group"],
  ["?", "This list"],
];

export type ShortcutActions = {
  keys(): void;
  queue(): void;
  save(): void;
  open(): void;
  undo(): void;
  redo(): void;
  copy(): void;
  paste(withInputs: boolean): void;
  selectAll(): void;
  toggleMode(mode: NodeMode): void;
  group(): void;
};

function isEditable(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  if (!el) return false;
  const tag = el.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
}

/** `paused`: a dialog (the palette) has the keyboard; only the global keys work. */
export function useShortcuts(a: ShortcutActions, paused: boolean): void {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const mod = e.ctrlKey || e.metaKey;
      const k = e.key.toLowerCase();
      if (mod && e.key === "Enter") {
        e.preventDefault();
        a.queue();
        return;
      }
      if (mod && k === "s") {
        e.preventDefault();
        a.save();
        return;
      }
      if (mod && k === "o") {
        e.preventDefault();
        a.open();
        return;
      }
      if (isEditable(e.target) || paused) return;
      if (e.key === "?" && !mod) {
        e.preventDefault();
        a.keys();
      } else if (mod && k === "z" && !e.shiftKey) {
        e.preventDefault();
        a.undo();
      } else if (mod && (k === "y" || (k === "z" && e.shiftKey))) {
        e.preventDefault();
        a.redo();
      } else if (mod && k === "c") {
        a.copy();
      } else if (mod && k === "v") {
        e.preventDefault();
        a.paste(e.shiftKey); // Ctrl+Shift+V keeps the links into the pasted nodes
      } else if (mod && k === "a") {
        e.preventDefault();
        a.selectAll();
      } else if (mod && k === "g") {
        e.preventDefault(); // ComfyUI's key: a group around the selection
        a.group();
      } else if (mod && (k === "m" || k === "b")) {
        e.preventDefault(); // ComfyUI's keys: Ctrl+M mutes, Ctrl+B bypasses the selection
        a.toggleMode(k === "m" ? "muted" : "bypass");
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [a, paused]);
}
