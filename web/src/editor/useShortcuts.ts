/** The editor's keyboard shortcuts (ComfyUI's where it has one: its core keybindings). */

import { useEffect } from "react";
import type { NodeMode } from "../lib/graph";
import { maskEditorOpen } from "./maskEditorState";

/** Every key the canvas answers to, as the "?" list shows it (keep in step with `commandFor`). */
export const SHORTCUTS: readonly (readonly [keys: string, action: string])[] = [
  ["Ctrl+Enter", "Queue the workflow"],
  ["Ctrl+Shift+Enter", "Queue the workflow at the front of the queue"],
  ["Ctrl+Alt+Enter", "Interrupt the running prompt"],
  ["Ctrl+S / Ctrl+O", "Save / open a workflow file"],
  ["Ctrl+Z / Ctrl+Y (Ctrl+Shift+Z)", "Undo / redo"],
  ["Ctrl+C / Ctrl+V", "Copy / paste the selected nodes (Ctrl+V also pastes an image or a workflow's JSON)"],
  ["Ctrl+Shift+V", "Paste, keeping the links into the pasted nodes"],
  ["Ctrl+A", "Select every node"],
  ["Ctrl+G", "Group the selected nodes"],
  ["Ctrl+M / Ctrl+B", "Mute / bypass the selected nodes"],
  ["Alt+C", "Collapse / expand the selected nodes"],
  ["P", "Pin / unpin the selected nodes"],
  ["Delete / Backspace", "Delete the selection: nodes, or a group clicked on its title (or the link that has the keyboard focus)"],
  ["Tab, then Enter", "Move the focus through nodes and links; Enter selects the focused one"],
  [".", "Fit the view to the graph"],
  ["Alt+= / Alt+-", "Zoom in / out"],
  ["Space+drag", "Pan the canvas (also over nodes)"],
  ["Q / H", "Show / hide the queue / history panel"],
  ["W", "Show / hide the Workflows library (Ctrl+S saves into it)"],
  ["R", "Refresh the node definitions (new model files)"],
  ["Double-click the canvas", "Add a node (search by name)"],
  ["Drag a link onto empty canvas", "Add a node that takes it"],
  ["Drag a link onto a node", "Link it to the node's first free input of its type (onto a widget: into that widget)"],
  ["Drag a linked input's dot", "Move or detach its link"],
  ["Shift+drag / Ctrl+drag", "Select a box of nodes"],
  ["Alt+drag a node", "Drag a clone of it (its values, no links); the node stays"],
  ["Right-click", "Menu of the canvas, a node or a group"],
  ["?", "This list"],
];

/** Keys that make a drag on the canvas a selection box: Shift, or Ctrl as in ComfyUI (Cmd on a Mac). */
export const SELECTION_KEYS: string[] = ["Shift", "Control", "Meta"];

/** What a key does. */
export type Command =
  | "queue" | "queueFront" | "interrupt" | "save" | "open"
  | "keys" | "undo" | "redo" | "copy" | "paste" | "pasteWithInputs" | "selectAll" | "group"
  | "mute" | "bypass" | "collapse" | "pin" | "fitView" | "zoomIn" | "zoomOut"
  | "queuePanel" | "historyPanel" | "workflowsPanel" | "refresh";

/** The parts of a KeyboardEvent the shortcuts read. */
export type KeyInfo = Pick<KeyboardEvent, "key" | "code" | "ctrlKey" | "metaKey" | "shiftKey" | "altKey">;

/**
 * Commands that work anywhere, a text field or an open dialog included (ComfyUI's too); but a
 * queue key over a modal dialog queues nothing (`queueKeyBlocker`).
 */
const GLOBAL: ReadonlySet<Command> = new Set(["queue", "queueFront", "interrupt", "save", "open"]);

export function isGlobal(c: Command): boolean {
  return GLOBAL.has(c);
}

/**
 * The command of a key press, or null. Alt combinations are read by the physical key
 * (`code`): on a Mac, Alt+C types "ç".
 */
export function commandFor(e: KeyInfo): Command | null {
  const mod = e.ctrlKey || e.metaKey;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (mod && e.key === "Enter") {
    if (e.altKey) return "interrupt";
    return e.shiftKey ? "queueFront" : "queue";
  }
  if (mod && !e.altKey) {
    switch (k) {
      case "s": return "save";
      case "o": return "open";
      case "z": return e.shiftKey ? "redo" : "undo";
      case "y": return "redo";
      case "c": return e.shiftKey ? null : "copy";
      case "v": return e.shiftKey ? "pasteWithInputs" : "paste";
      case "a": return e.shiftKey ? null : "selectAll";
      case "g": return e.shiftKey ? null : "group";
      case "m": return e.shiftKey ? null : "mute";
      case "b": return e.shiftKey ? null : "bypass";
      default: return null;
    }
  }
  if (mod) return null;
  if (e.altKey) {
    if (e.code === "KeyC" && !e.shiftKey) return "collapse";
    if (e.code === "Equal" || e.code === "NumpadAdd" || e.key === "+" || e.key === "=") return "zoomIn";
    if (e.code === "Minus" || e.code === "NumpadSubtract" || e.key === "-") return "zoomOut";
    return null;
  }
  if (e.key === "?") return "keys";
  if (e.shiftKey) return null;
  switch (k) {
    case ".": return "fitView";
    case "p": return "pin";
    case "q": return "queuePanel";
    case "h": return "historyPanel";
    case "w": return "workflowsPanel";
    case "r": return "refresh";
    default: return null;
  }
}

/** Keys whose browser default (print, bookmark, history...) the command replaces. */
function keepsDefault(c: Command): boolean {
  // Ctrl+C also copies selected text (a node's label, a toast) and puts copied nodes on the
  // system clipboard; Ctrl+V's paste event brings what the clipboard holds (editor/useClipboard.ts)
  return c === "copy" || c === "paste";
}

export type ShortcutActions = {
  keys(): void;
  queue(): void;
  queueFront(): void;
  interrupt(): void;
  save(): void;
  open(): void;
  undo(): void;
  redo(): void;
  copy(): void;
  paste(withInputs: boolean): void;
  selectAll(): void;
  toggleMode(mode: NodeMode): void;
  group(): void;
  collapse(): void;
  pin(): void;
  fitView(): void;
  zoom(direction: 1 | -1): void;
  panel(tab: "queue" | "history" | "workflows"): void;
  refresh(): void;
  /** Remove the link (edge) with this id: Delete on a link that has the keyboard focus. */
  deleteLink(id: string): void;
};

function run(a: ShortcutActions, c: Command): void {
  switch (c) {
    case "queue": return a.queue();
    case "queueFront": return a.queueFront();
    case "interrupt": return a.interrupt();
    case "save": return a.save();
    case "open": return a.open();
    case "keys": return a.keys();
    case "undo": return a.undo();
    case "redo": return a.redo();
    case "copy": return a.copy();
    case "paste": return a.paste(false);
    case "pasteWithInputs": return a.paste(true); // keeps the links into the pasted nodes
    case "selectAll": return a.selectAll();
    case "group": return a.group();
    case "mute": return a.toggleMode("muted");
    case "bypass": return a.toggleMode("bypass");
    case "collapse": return a.collapse();
    case "pin": return a.pin();
    case "fitView": return a.fitView();
    case "zoomIn": return a.zoom(1);
    case "zoomOut": return a.zoom(-1);
    case "queuePanel": return a.panel("queue");
    case "historyPanel": return a.panel("history");
    case "workflowsPanel": return a.panel("workflows");
    case "refresh": return a.refresh();
  }
}

export function isEditable(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  if (!el || !el.tagName) return false;
  const tag = el.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
}

/** Input types that are no text: a key with Ctrl on them means nothing to them. */
const NOT_TEXT = new Set(["checkbox", "radio", "range", "color", "file", "button", "submit", "reset", "image"]);

/**
 * Whether `target` is a text field being edited, whose own undo, select-all, copy and paste
 * Ctrl+Z / A / C / V are. A select, a checkbox, a slider or a number widget (ComfyUI's are
 * no text fields: typing one is an edit of the graph) is not: those keys go to the graph.
 */
export function isTextEntry(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  if (!el || !el.tagName) return false;
  if (el.tagName === "TEXTAREA" || el.isContentEditable) return true;
  if (el.tagName !== "INPUT") return false;
  return !NOT_TEXT.has(((el as HTMLInputElement).type || "text").toLowerCase());
}

/** A number widget's field (canvas/widgets.tsx): each keystroke is a graph edit already. */
function isNumberWidget(target: EventTarget | null): boolean {
  return !!(target as HTMLElement | null)?.classList?.contains("sf-number-drag");
}

/**
 * Whether the key press is the focused field's own (the canvas leaves it alone): any
 * command in a text field, but for Ctrl+Z / Ctrl+Y in a number widget, which are the
 * graph's as in ComfyUI (its number widgets are no text fields); a single key (P, Q, ".")
 * in any form control too, where it picks a choice by its first letter. Ctrl commands on a
 * select or a checkbox are the graph's: ComfyUI's combos take no keyboard focus.
 */
export function fieldKeepsKey(c: Command, e: KeyInfo, target: EventTarget | null): boolean {
  if (isTextEntry(target)) return !((c === "undo" || c === "redo") && isNumberWidget(target));
  return !(e.ctrlKey || e.metaKey) && isEditable(target);
}

/**
 * A browser undo or redo (`beforeinput` of type historyUndo / historyRedo) that would change
 * another field than the one being edited. The browser keeps one undo list for the whole
 * page: once the focused field has nothing left to undo, Ctrl+Z went on into fields of other
 * nodes, moving the focus there, and each such change reached the graph as a new edit, so
 * the graph's own history filled with steps the user never made (its Undo then put the
 * values back one by one, as a redo would).
 */
export function strayHistoryEdit(inputType: string, target: EventTarget | null, active: Element | null): boolean {
  return (inputType === "historyUndo" || inputType === "historyRedo") && target !== active;
}

/** Leave the focused form control, as a press on ComfyUI's canvas does: the keys go to the graph again. */
export function blurFocusedField(doc: Document = document): void {
  const el = doc.activeElement as HTMLElement | null;
  if (el && isEditable(el)) el.blur();
}

/**
 * Modal dialogs the queue keys do not reach past: every one but the image viewer, which shows
 * the graph's own results (Ctrl+Enter there queues it again, as in ComfyUI).
 */
const MODAL_OVER_GRAPH = '[aria-modal="true"]:not(.sf-lightbox)';

/**
 * The name of the modal dialog open over the graph (the Examples browser, Clear's question),
 * for which a queue key (Ctrl+Enter, Ctrl+Shift+Enter) queues nothing, or null. The graph
 * behind it is not what the user is looking at, and the Examples browser is about to replace
 * it. `opening`: a workflow is being opened; a queue key then waits for it and runs that one
 * (App's whenOpened), never the graph it replaces, so it is not refused.
 */
export function queueKeyBlocker(doc: Pick<ParentNode, "querySelector">, opening: boolean): string | null {
  if (opening) return null;
  const dialog = doc.querySelector(MODAL_OVER_GRAPH);
  return dialog ? dialog.getAttribute("aria-label") || "dialog" : null;
}

/** The id of the link (React Flow edge) that has the keyboard focus, if one has. */
export function focusedLinkId(active: Element | null): string | null {
  const edge = active?.closest?.(".react-flow__edge");
  return edge?.getAttribute("data-id") ?? null;
}

/** `paused`: a dialog (the palette, a menu) has the keyboard; only the global keys work. */
export function useShortcuts(a: ShortcutActions, paused: boolean): void {
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (maskEditorOpen()) return; // it has the keyboard: none reaches the graph under it
      const c = commandFor(e);
      if (!c) return;
      if (!isGlobal(c) && (fieldKeepsKey(c, e, e.target) || paused)) return;
      if (e.repeat && c !== "zoomIn" && c !== "zoomOut" && c !== "undo" && c !== "redo") {
        if (!keepsDefault(c)) e.preventDefault();
        return; // a held key acts once (a held Q would open and close the panel)
      }
      if (!keepsDefault(c)) e.preventDefault();
      // a number widget or a select keeps no text of its own to show the undone value in
      if (c === "undo" || c === "redo") blurFocusedField();
      run(a, c);
    };
    const onBeforeInput = (e: InputEvent) => {
      if (strayHistoryEdit(e.inputType, e.target, document.activeElement)) e.preventDefault();
    };
    // Delete on a focused link removes that link alone: caught before React Flow's own
    // Delete (on the document), which would remove the selected nodes instead.
    const onDelete = (e: KeyboardEvent) => {
      if ((e.key !== "Delete" && e.key !== "Backspace") || paused || isEditable(e.target)) return;
      if (maskEditorOpen()) return;
      const id = focusedLinkId(document.activeElement);
      if (!id) return;
      e.preventDefault();
      e.stopPropagation();
      a.deleteLink(id);
    };
    // Ctrl+Enter (queue, interrupt) is caught before it reaches a focused node: React Flow
    // takes Enter there as a click with its multi-selection key held, which unselected the
    // node just clicked (ComfyUI keeps the selection when queueing).
    const onEnter = (e: KeyboardEvent) => {
      const c = e.key === "Enter" && !maskEditorOpen() ? commandFor(e) : null;
      if (!c) return;
      e.preventDefault();
      e.stopPropagation();
      if (!e.repeat) run(a, c);
    };
    window.addEventListener("keydown", onKey);
    window.addEventListener("beforeinput", onBeforeInput, true);
    window.addEventListener("keydown", onDelete, true);
    window.addEventListener("keydown", onEnter, true);
    return () => {
      window.removeEventListener("keydown", onKey);
      window.removeEventListener("beforeinput", onBeforeInput, true);
      window.removeEventListener("keydown", onDelete, true);
      window.removeEventListener("keydown", onEnter, true);
    };
  }, [a, paused]);
}
