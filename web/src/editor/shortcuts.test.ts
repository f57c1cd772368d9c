import { describe, expect, it } from "vitest";
import { afterToggle } from "../lib/sidepanel";
import { deleteRemovesGroup } from "./Groups";
import { toggledFlag } from "./useEditCommands";
import { commandFor, fieldKeepsKey, focusedLinkId, isGlobal, isTextEntry, type KeyInfo, queueKeyBlocker, SELECTION_KEYS, SHORTCUTS,
  strayHistoryEdit } from "./useShortcuts";
import { pannedViewport } from "./useSpacePan";

const CODES: Record<string, string> = { ".": "Period", "=": "Equal", "-": "Minus", "?": "Slash", Enter: "Enter" };

/** A key press as "Ctrl+Shift+Enter", "Alt+c", "q". */
function press(combo: string, extra: Partial<KeyInfo> = {}): KeyInfo {
  const parts = combo.split("+");
  const key = combo.endsWith("++") ? "+" : parts[parts.length - 1];
  const mods = new Set(parts.slice(0, -1));
  const code = CODES[key] ?? (key.length === 1 ? `Key${key.toUpperCase()}` : key);
  return {
    key, code, ctrlKey: mods.has("Ctrl"), metaKey: mods.has("Meta"), shiftKey: mods.has("Shift"), altKey: mods.has("Alt"),
    ...extra,
  };
}

describe("commandFor (ComfyUI's core keybindings)", () => {
  it.each([
    ["Ctrl+Enter", "queue"],
    ["Meta+Enter", "queue"],
    ["Ctrl+Shift+Enter", "queueFront"],
    ["Ctrl+Alt+Enter", "interrupt"],
    ["Ctrl+s", "save"],
    ["Ctrl+o", "open"],
    ["Ctrl+z", "undo"],
    ["Ctrl+y", "redo"],
    ["Ctrl+Shift+Z", "redo"],
    ["Ctrl+c", "copy"],
    ["Ctrl+v", "paste"],
    ["Ctrl+Shift+V", "pasteWithInputs"],
    ["Ctrl+a", "selectAll"],
    ["Ctrl+g", "group"],
    ["Ctrl+m", "mute"],
    ["Ctrl+b", "bypass"],
    ["Alt+c", "collapse"],
    ["Alt+=", "zoomIn"],
    ["Alt+-", "zoomOut"],
    ["p", "pin"],
    [".", "fitView"],
    ["q", "queuePanel"],
    ["h", "historyPanel"],
    ["w", "workflowsPanel"],
    ["r", "refresh"],
    ["Shift+?", "keys"],
  ])("%s → %s", (combo, command) => {
    expect(commandFor(press(combo))).toBe(command);
  });

  it("reads Alt combinations by the physical key (a Mac types ç for Alt+C, ≠ for Alt+=)", () => {
    expect(commandFor(press("Alt+ç", { code: "KeyC" }))).toBe("collapse");
    expect(commandFor(press("Alt+≠", { code: "Equal" }))).toBe("zoomIn");
    expect(commandFor(press("Alt+Shift++", { code: "Equal" }))).toBe("zoomIn");
    expect(commandFor(press("Alt++", { code: "NumpadAdd" }))).toBe("zoomIn");
    expect(commandFor(press("Alt+–", { code: "Minus" }))).toBe("zoomOut");
  });

  it("leaves other keys to the browser and the canvas", () => {
    for (const combo of ["c", "x", "Delete", "Backspace", "Escape", "Shift+P", "Shift+R", "Ctrl+r", "Ctrl+p",
      "Ctrl+Shift+C", "Alt+p", "Ctrl+Alt+c", "Enter", "Shift+Enter", " "]) {
      expect(commandFor(press(combo)), combo).toBeNull();
    }
  });

  it("keeps queue, save and open global; single keys only outside text fields", () => {
    expect(["queue", "queueFront", "interrupt", "save", "open"].every((c) => isGlobal(c as never))).toBe(true);
    for (const c of ["pin", "refresh", "queuePanel", "historyPanel", "fitView", "collapse", "undo", "paste"]) {
      expect(isGlobal(c as never), c).toBe(false);
    }
  });

  it("lists every key it answers to in the shortcuts help", () => {
    const listed = SHORTCUTS.map(([keys]) => keys).join(" | ");
    for (const keys of ["Ctrl+Shift+Enter", "Alt+C", "Space+drag", "Alt+= / Alt+-", "Q / H", "R", "P", ".", "Ctrl+Alt+Enter",
      "Ctrl+drag", "Alt+drag", "Drag a link onto a node"]) {
      expect(listed).toContain(keys);
    }
  });

  it("draws a selection box on Shift+drag and, as in ComfyUI, Ctrl+drag", () => {
    expect(SELECTION_KEYS).toEqual(expect.arrayContaining(["Shift", "Control"]));
  });
});

describe("focusedLinkId", () => {
  const el = (edgeId: string | null) => ({
    closest: (sel: string) => (sel === ".react-flow__edge" && edgeId !== null ? { getAttribute: () => edgeId } : null),
  }) as unknown as Element;

  it("names the link whose element has the focus, else null", () => {
    expect(focusedLinkId(el("3-0-5-model"))).toBe("3-0-5-model");
    expect(focusedLinkId(el(null))).toBeNull();
    expect(focusedLinkId(null)).toBeNull();
  });
});

describe("toggledFlag (P pins, Alt+C collapses)", () => {
  const nodes = () => [
    { id: "1", selected: true, data: {} as { pinned?: boolean; collapsed?: boolean } },
    { id: "2", selected: true, data: { collapsed: true } as { pinned?: boolean; collapsed?: boolean } },
    { id: "3", selected: false, data: {} as { pinned?: boolean; collapsed?: boolean } },
  ];

  it("sets the flag on every selected node when some lack it", () => {
    const out = toggledFlag(nodes(), "collapsed");
    expect(out.map((n) => !!n.data.collapsed)).toEqual([true, true, false]);
  });

  it("clears it when every selected node has it", () => {
    const once = toggledFlag(nodes(), "collapsed");
    const twice = toggledFlag(once, "collapsed");
    expect(twice.map((n) => "collapsed" in n.data)).toEqual([false, false, false]);
  });

  it("pins (not draggable) and unpins (draggable again)", () => {
    const pinned = toggledFlag(nodes(), "pinned");
    expect(pinned.map((n) => [!!n.data.pinned, (n as { draggable?: boolean }).draggable])).toEqual([
      [true, false], [true, false], [false, undefined],
    ]);
    const unpinned = toggledFlag(pinned, "pinned");
    expect(unpinned.map((n) => [!!n.data.pinned, (n as { draggable?: boolean }).draggable])).toEqual([
      [false, true], [false, true], [false, undefined],
    ]);
  });

  it("acts on the given ids instead of the selection, and leaves the list alone with none chosen", () => {
    expect(toggledFlag(nodes(), "pinned", new Set(["3"])).map((n) => !!n.data.pinned)).toEqual([false, false, true]);
    const none = nodes().map((n) => ({ ...n, selected: false }));
    expect(toggledFlag(none, "pinned")).toBe(none);
  });
});

describe("afterToggle (Q, H)", () => {
  it("opens the panel on the tab, switches tabs, and closes the panel showing that tab", () => {
    expect(afterToggle(true, "history", "queue")).toEqual({ collapsed: false, tab: "queue" });
    expect(afterToggle(false, "history", "queue")).toEqual({ collapsed: false, tab: "queue" });
    expect(afterToggle(false, "queue", "queue")).toEqual({ collapsed: true, tab: "queue" });
  });
});

describe("pannedViewport", () => {
  it("moves the view with the pointer at any zoom", () => {
    expect(pannedViewport({ x: 10, y: -5, zoom: 0.5 }, 30, -20)).toEqual({ x: 40, y: -25, zoom: 0.5 });
  });
});

/** A stand-in for a focused element (tests run without a DOM). */
function el(tagName: string, opts: { type?: string; className?: string; editable?: boolean } = {}): EventTarget {
  const classes = new Set((opts.className ?? "").split(" ").filter(Boolean));
  return { tagName, type: opts.type ?? "", isContentEditable: !!opts.editable,
    classList: { contains: (c: string) => classes.has(c) } } as unknown as EventTarget;
}

describe("which keys a focused widget keeps (ComfyUI: a text field its own, the rest the graph's)", () => {
  const textarea = el("TEXTAREA");
  const line = el("INPUT", { type: "text" });
  const select = el("SELECT");
  const checkbox = el("INPUT", { type: "checkbox" });
  const number = el("INPUT", { type: "text", className: "nodrag sf-number-drag" });
  const key = (combo: string) => {
    const k = press(combo);
    return [commandFor(k)!, k] as const;
  };

  it("gives Ctrl+Z / Ctrl+Y on a combo, a checkbox or a number widget to the graph", () => {
    for (const target of [select, checkbox, number]) {
      for (const combo of ["Ctrl+z", "Ctrl+y", "Ctrl+Shift+Z"]) expect(fieldKeepsKey(...key(combo), target), combo).toBe(false);
    }
    expect(fieldKeepsKey(...key("Ctrl+z"), null)).toBe(false);
  });

  it("leaves Ctrl+Z and the other editing keys to a text field being edited", () => {
    for (const target of [textarea, line, el("DIV", { editable: true })]) {
      for (const combo of ["Ctrl+z", "Ctrl+y", "Ctrl+a", "Ctrl+v", "p"]) expect(fieldKeepsKey(...key(combo), target), combo).toBe(true);
    }
    // a number widget being typed keeps select-all and paste (click, Ctrl+A, type)
    expect(fieldKeepsKey(...key("Ctrl+a"), number)).toBe(true);
    expect(fieldKeepsKey(...key("Ctrl+v"), number)).toBe(true);
    // a single key on a select picks a choice by its first letter
    expect(fieldKeepsKey(...key("p"), select)).toBe(true);
    expect(isTextEntry(select)).toBe(false);
    expect(isTextEntry(line)).toBe(true);
  });

  it("refuses the browser's undo of another field than the one being edited", () => {
    expect(strayHistoryEdit("historyUndo", textarea, line as Element)).toBe(true);
    expect(strayHistoryEdit("historyRedo", textarea, null)).toBe(true);
    expect(strayHistoryEdit("historyUndo", textarea, textarea as Element)).toBe(false);
    expect(strayHistoryEdit("insertText", textarea, line as Element)).toBe(false);
  });
});

describe("queueKeyBlocker (Ctrl+Enter over a modal dialog)", () => {
  /** A page whose open dialogs match these selectors' parts: [aria-label, class]. */
  const page = (...dialogs: [label: string | null, cls: string][]) => ({
    querySelector: (sel: string) => {
      expect(sel).toBe('[aria-modal="true"]:not(.sf-lightbox)');
      const d = dialogs.find(([, cls]) => cls !== "sf-lightbox");
      return d ? ({ getAttribute: (a: string) => (a === "aria-label" ? d[0] : null) } as unknown as Element) : null;
    },
  });

  it("names the Examples browser or Clear's question open over the graph", () => {
    expect(queueKeyBlocker(page(["Examples", "sf-examples"]), false)).toBe("Examples");
    expect(queueKeyBlocker(page(["Clear the workflow?", "sf-confirm"]), false)).toBe("Clear the workflow?");
    expect(queueKeyBlocker(page([null, "sf-examples"]), false)).toBe("dialog");
  });

  it("lets the queue keys through with no dialog, over the image viewer, and while a workflow opens", () => {
    expect(queueKeyBlocker(page(), false)).toBeNull();
    expect(queueKeyBlocker(page(["image", "sf-lightbox"]), false)).toBeNull();
    // the Examples browser saying "Opening …": the queue waits for the example and runs it
    expect(queueKeyBlocker(page(["Examples", "sf-examples"]), true)).toBeNull();
  });
});

describe("deleteRemovesGroup (Delete on a group selected by its title)", () => {
  const el = (tagName: string) => ({ tagName, isContentEditable: false }) as unknown as EventTarget;

  it("removes it with Delete or Backspace on the canvas", () => {
    expect(deleteRemovesGroup("Delete", el("DIV"), false)).toBe(true);
    expect(deleteRemovesGroup("Backspace", null, false)).toBe(true);
  });

  it("leaves it while a field is typed in, a dialog or menu is open, or for another key", () => {
    expect(deleteRemovesGroup("Backspace", el("INPUT"), false)).toBe(false); // its title being renamed
    expect(deleteRemovesGroup("Delete", el("TEXTAREA"), false)).toBe(false);
    expect(deleteRemovesGroup("Delete", el("DIV"), true)).toBe(false);
    expect(deleteRemovesGroup("x", el("DIV"), false)).toBe(false);
  });
});
