/**
 * Right-click menus. On the canvas: add a node by category, a reroute or a note,
 * paste, fit. On a node: help, rename, colour, bypass, mute, pin, collapse, fit size,
 * clone, remove, and its inputs and outputs (a linked input can be detached). On a
 * link: insert a reroute, delete.
 * On a group's title: rename, colour, fit to its nodes, select its nodes, remove.
 */

import { useReactFlow } from "@xyflow/react";
import { type KeyboardEvent as ReactKeyboardEvent, useEffect, useMemo, useRef, useState } from "react";
import { useEditor } from "../canvas/context";
import { inHandle, inputOf, type SfEdge, type SfNode } from "../canvas/flow";
import { NOTE, REROUTE } from "../lib/reroute";
import { type Defs, nodeTitle } from "../lib/schema";
import { typeColor } from "../lib/types";
import { GROUP_COLOR, groupAround, nodesInside } from "../lib/groups";
import { groupSelection, nodeRects } from "./Groups";
import { openMaskEditor } from "./MaskEditor";
import type { useEditCommands } from "./useEditCommands";
import { useReturnFocus } from "./useReturnFocus";
import type { GraphStore } from "./useGraphStore";
import type { useLinking } from "./useLinking";

export type MenuTarget =
  | { kind: "pane"; x: number; y: number }
  | { kind: "node"; id: string; x: number; y: number }
  | { kind: "edge"; id: string; x: number; y: number }
  | { kind: "group"; index: number; x: number; y: number };

/** Header colours (ComfyUI's node colour names). */
export const NODE_COLORS: Record<string, string> = {
  red: "#553333", brown: "#593930", green: "#335533", blue: "#333355",
  "pale blue": "#3f5159", cyan: "#335555", purple: "#553355", yellow: "#665533", black: "#000000",
};

type Item = {
  label: string; action?: () => void; sub?: Item[]; checked?: boolean; hint?: string; disabled?: boolean;
  /** The action replaces the menu's content (rename): do not close it. */
  keepOpen?: boolean;
};

/** Node types grouped by category (top-level category, then the rest), for the canvas menu. */
export function categoryTree(defs: Defs): Map<string, { type: string; name: string }[]> {
  const out = new Map<string, { type: string; name: string }[]>();
  for (const [type, d] of defs) {
    const list = out.get(d.category) ?? [];
    list.push({ type, name: d.displayName });
    out.set(d.category, list);
  }
  for (const list of out.values()) list.sort((a, b) => a.name.localeCompare(b.name));
  return new Map([...out.entries()].sort(([a], [b]) => a.localeCompare(b)));
}

/** The menu's own items (not a submenu's), for the arrow keys. */
function ownItems(list: HTMLElement): HTMLElement[] {
  return [...list.children].filter((c): c is HTMLElement => c instanceof HTMLElement && c.role === "menuitem");
}

/**
 * A menu of items, used with the mouse or the keyboard (WAI-ARIA's menu): it takes the focus
 * on its first item when it opens (a right-click, Shift+F10, the ContextMenu key); ↑ ↓ Home
 * End move, Enter or Space choose, → or Enter opens a submenu (← or Escape goes back), and
 * Tab stays inside. `onBack`: the submenu's way back to the item that opened it.
 */
function MenuList({ items, onClose, label, onBack }: {
  items: Item[]; onClose(): void; label: string; onBack?: () => void;
}) {
  const [open, setOpen] = useState<number | null>(null);
  const list = useRef<HTMLUListElement>(null);
  const focusAt = (i: number) => {
    const own = list.current ? ownItems(list.current) : [];
    own[(i + own.length) % Math.max(own.length, 1)]?.focus();
  };
  useEffect(() => {
    const own = list.current ? ownItems(list.current) : [];
    (own.find((el) => el.getAttribute("aria-disabled") !== "true") ?? own[0])?.focus();
  }, []);
  const choose = (it: Item, i: number) => {
    if (it.sub) {
      setOpen(open === i ? null : i);
      return;
    }
    if (it.disabled || !it.action) return;
    it.action();
    if (!it.keepOpen) onClose();
  };
  const onKeyDown = (e: ReactKeyboardEvent<HTMLUListElement>) => {
    const own = list.current ? ownItems(list.current) : [];
    const at = own.indexOf(document.activeElement as HTMLElement);
    if (at < 0) return; // a submenu's key: it handles its own
    const it = items[at];
    const key = e.key === "Tab" ? (e.shiftKey ? "ArrowUp" : "ArrowDown") : e.key;
    const moves: Record<string, number> = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: own.length - 1 };
    if (key in moves) focusAt(moves[key]);
    else if ((key === "Enter" || key === " " || key === "ArrowRight") && it) {
      if (key === "ArrowRight" && !it.sub) return;
      if (it.sub) setOpen(i => (i === at ? i : at));
      else choose(it, at);
    } else if ((key === "ArrowLeft" || key === "Escape") && onBack) onBack();
    else return;
    e.preventDefault();
    e.stopPropagation(); // Escape in a submenu closes only it
  };
  return (
    <ul className="sf-ctx-list" role="menu" aria-label={label} ref={list} onKeyDown={onKeyDown}>
      {items.map((it, i) => (
        <li
          key={`${it.label}-${i}`}
          role="menuitem"
          tabIndex={-1}
          aria-label={it.label}
          aria-haspopup={it.sub ? "menu" : undefined}
          aria-expanded={it.sub ? open === i : undefined}
          aria-disabled={it.disabled || undefined}
          data-checked={it.checked === undefined ? undefined : String(it.checked)}
          className={`${it.sub ? "sf-ctx-sub" : ""}${it.disabled ? " sf-disabled" : ""}${open === i ? " open" : ""}`}
          onMouseEnter={() => setOpen(it.sub ? i : null)}
          onClick={(e) => {
            e.stopPropagation();
            choose(it, i);
          }}
        >
          <span>{it.checked ? "✓ " : ""}{it.label}</span>
          {it.hint && <span className="sf-ctx-hint">{it.hint}</span>}
          {it.sub && <span className="sf-ctx-hint">▸</span>}
          {it.sub && open === i && (
            <MenuList items={it.sub} onClose={onClose} label={it.label} onBack={() => {
              setOpen(null);
              focusAt(i);
            }} />
          )}
        </li>
      ))}
    </ul>
  );
}

function RenameBox({ node, onDone }: { node: SfNode; onDone(title: string | null): void }) {
  return (
    <div className="sf-ctx-rename">
      <input
        autoFocus
        aria-label="new title"
        defaultValue={node.data.title ?? ""}
        placeholder="title"
        onKeyDown={(e) => {
          if (e.key === "Enter") onDone((e.target as HTMLInputElement).value);
          if (e.key === "Escape") onDone(null);
        }}
      />
    </div>
  );
}

export function ContextMenu({ target, g, edit, linking, onClose }: {
  target: MenuTarget;
  g: GraphStore;
  edit: ReturnType<typeof useEditCommands>;
  linking: ReturnType<typeof useLinking>;
  onClose(): void;
}) {
  const rf = useReactFlow<SfNode, SfEdge>();
  const [renaming, setRenaming] = useState(false);
  const defs = g.defsRef.current;
  const { showHelp, setValue } = useEditor();
  useReturnFocus(true); // the node, link or canvas the menu was opened on has it back

  useEffect(() => {
    const close = (e: MouseEvent) => {
      if (!(e.target as HTMLElement | null)?.closest(".sf-ctx")) onClose();
    };
    const esc = (e: KeyboardEvent) => {
      if (e.key === "Escape") onClose();
    };
    window.addEventListener("mousedown", close);
    window.addEventListener("keydown", esc);
    return () => {
      window.removeEventListener("mousedown", close);
      window.removeEventListener("keydown", esc);
    };
  }, [onClose]);

  const node = target.kind === "node" ? g.nodes.find((n) => n.id === target.id) : undefined;
  const gone = target.kind === "node" && !node;
  useEffect(() => {
    if (gone) onClose(); // its node was removed (undo, another tab): no menu left to show
  }, [gone, onClose]);

  const items = useMemo((): Item[] => {
    const flowAt = rf.screenToFlowPosition({ x: target.x, y: target.y });
    if (target.kind === "pane") {
      const tree = categoryTree(defs);
      return [
        {
          label: "Add node",
          sub: [...tree.entries()].map(([cat, list]) => ({
            label: cat,
            sub: list.map((n) => ({ label: n.name, action: () => void linking.addNodeAt(n.type, flowAt) })),
          })),
        },
        { label: "Search nodes…", hint: "double-click", action: () => linking.setPalette({ screen: { x: target.x, y: target.y }, flow: flowAt }) },
        { label: "Add reroute", action: () => void linking.addNode(REROUTE, flowAt) },
        { label: "Add note", action: () => void linking.addNodeAt(NOTE, flowAt) },
        { label: "Paste", hint: "Ctrl+V", action: () => edit.paste(false) },
        { label: "Paste with input links", hint: "Ctrl+Shift+V", action: () => edit.paste(true) },
        { label: "Select all", hint: "Ctrl+A", action: edit.selectAll },
        {
          label: "Group selected nodes", hint: "Ctrl+G", disabled: !g.nodes.some((n) => n.selected),
          action: () => groupSelection(g),
        },
        { label: "Fit view", action: g.fit },
      ];
    }
    if (target.kind === "edge") {
      const edge = g.edges.find((e) => e.id === target.id);
      return [
        { label: "Insert reroute", action: () => linking.insertReroute(target.id, flowAt) },
        { label: "Delete link", action: () => g.setEdges((es) => es.filter((e) => e.id !== target.id)) },
        {
          label: "Go to source node", disabled: !edge,
          action: () => edge && void rf.fitView({ nodes: [{ id: edge.source }], maxZoom: 1, duration: 200 }),
        },
      ];
    }
    if (target.kind === "group") {
      const i = target.index;
      const group = g.groups[i];
      if (!group) return [];
      const inside = () => new Set(nodesInside(group, nodeRects(g.state.current.nodes)));
      const patchGroup = (fn: (x: typeof group) => typeof group) =>
        g.setGroups((gs) => gs.map((x, j) => (j === i ? fn({ ...x }) : x)));
      return [
        { label: "Rename…", action: () => setRenaming(true), keepOpen: true },
        {
          label: "Colour",
          sub: [
            { label: "default", checked: !group.color, action: () => patchGroup((x) => { delete x.color; return x; }) },
            ...Object.entries(NODE_COLORS).map(([name, c]) => ({
              label: name, checked: group.color === c, action: () => patchGroup((x) => ({ ...x, color: c })),
            })),
          ],
        },
        {
          label: "Fit to its nodes",
          action: () => {
            const rects = [...nodeRects(g.state.current.nodes, inside()).values()];
            if (rects.length) patchGroup((x) => ({ ...x, bounding: groupAround(rects, x.title).bounding }));
          },
        },
        {
          label: "Select its nodes",
          action: () => {
            const ids = inside();
            g.setNodes((ns) => ns.map((n) => ({ ...n, selected: ids.has(n.id) })));
          },
        },
        { label: "Remove group", action: () => g.setGroups((gs) => gs.filter((_, j) => j !== i)) },
        {
          label: "Remove group and its nodes",
          action: () => {
            edit.remove(inside());
            g.setGroups((gs) => gs.filter((_, j) => j !== i));
          },
        },
      ];
    }
    if (!node) return [];
    const id = node.id;
    const ids = node.selected ? new Set(g.nodes.filter((n) => n.selected).map((n) => n.id)) : new Set([id]);
    const def = defs.get(node.data.type);
    const patch = (fn: (d: SfNode["data"]) => SfNode["data"], extra: Partial<SfNode> = {}) =>
      g.setNodes((ns) => ns.map((n) => (ids.has(n.id) ? { ...n, ...extra, data: fn({ ...n.data }) } : n)));
    const linkedInputs = new Set(g.edges.filter((e) => e.target === id).map((e) => inputOf(e.targetHandle)));
    // Load Image and its kind: paint a mask on the image it loads (editor/MaskEditor.tsx)
    const maskInput = def?.inputs.find((i) => i.options.upload === "image" && !linkedInputs.has(i.name));
    const maskImage = maskInput ? node.data.values[maskInput.name] : undefined;
    return [
      ...(def || node.data.type === REROUTE || node.data.type === NOTE
        ? [{ label: "Help", hint: "?", action: () => showHelp(id) }] : []),
      ...(maskInput && typeof maskImage === "string" && maskImage
        ? [{ label: "Open in MaskEditor", action: () => openMaskEditor({
          image: maskImage, onSave: (v) => setValue(id, maskInput.name, v),
        }) }] : []),
      { label: "Rename…", action: () => setRenaming(true), keepOpen: true },
      {
        label: "Colour",
        sub: [
          { label: "default", checked: !node.data.color, action: () => patch((d) => { delete d.color; return d; }) },
          ...Object.entries(NODE_COLORS).map(([name, c]) => ({
            label: name, checked: node.data.color === c, action: () => patch((d) => ({ ...d, color: c })),
          })),
        ],
      },
      { label: "Bypass", hint: "Ctrl+B", checked: node.data.mode === "bypass", action: () => edit.toggleMode("bypass", ids) },
      { label: "Mute", hint: "Ctrl+M", checked: node.data.mode === "muted", action: () => edit.toggleMode("muted", ids) },
      {
        label: "Pin", hint: "P", checked: !!node.data.pinned,
        action: () => {
          const pin = !node.data.pinned;
          patch((d) => { if (pin) d.pinned = true; else delete d.pinned; return d; }, { draggable: !pin });
        },
      },
      {
        label: "Collapse", hint: "Alt+C", checked: !!node.data.collapsed,
        action: () => {
          const fold = !node.data.collapsed;
          patch((d) => { if (fold) d.collapsed = true; else delete d.collapsed; return d; });
        },
      },
      {
        label: "Fit size to content", disabled: !node.data.size && node.width === undefined,
        action: () => g.setNodes((ns) => ns.map((n) => {
          if (!ids.has(n.id)) return n;
          const data = { ...n.data };
          delete data.size;
          const { width: _w, height: _h, ...rest } = n;
          return { ...rest, data };
        })),
      },
      {
        label: "Inputs and outputs",
        sub: [
          ...(def?.inputs ?? []).map((i): Item => ({
            label: `in: ${i.name}`,
            hint: `${i.type}${linkedInputs.has(i.name) ? " · linked — click to detach" : ""}`,
            disabled: !linkedInputs.has(i.name),
            action: () => g.setEdges((es) => es.filter((e) => !(e.target === id && e.targetHandle === inHandle(i.name)))),
          })),
          ...(def?.outputs ?? []).map((o): Item => ({ label: `out: ${o.name}`, hint: o.type, disabled: true })),
        ],
      },
      {
        label: ids.size > 1 ? "Group selected nodes" : "Group this node", hint: "Ctrl+G",
        action: () => g.setGroups((gs) => [...gs, groupAround([...nodeRects(g.state.current.nodes, ids).values()])]),
      },
      { label: "Clone", action: () => edit.clone(id) },
      { label: "Remove", hint: "Del", action: () => edit.remove(ids) },
    ];
  }, [target, node, defs, g, edit, linking, rf, showHelp, setValue]);

  const style = {
    left: Math.min(target.x, window.innerWidth - 240),
    top: Math.min(target.y, window.innerHeight - 40 - items.length * 26),
  };
  return (
    <div className="sf-ctx" style={style} data-menu={target.kind} onContextMenu={(e) => e.preventDefault()}>
      {target.kind === "group" && g.groups[target.index] && (
        <div className="sf-ctx-title" style={{ borderColor: g.groups[target.index].color ?? GROUP_COLOR }}>
          {g.groups[target.index].title}
        </div>
      )}
      {node && target.kind === "node" && (
        <div className="sf-ctx-title" style={{ borderColor: node.data.color ?? typeColor("*") }}>
          {nodeTitle(node.data, defs)}
        </div>
      )}
      {renaming && target.kind === "group" && g.groups[target.index] ? (
        <div className="sf-ctx-rename">
          <input autoFocus aria-label="new title" defaultValue={g.groups[target.index].title} onKeyDown={(e) => {
            if (e.key === "Enter") {
              const title = (e.target as HTMLInputElement).value.trim();
              if (title) g.setGroups((gs) => gs.map((x, j) => (j === target.index ? { ...x, title } : x)));
              onClose();
            }
            if (e.key === "Escape") onClose();
          }} />
        </div>
      ) : renaming && node ? (
        <RenameBox node={node} onDone={(t) => {
          if (t !== null) {
            const v = t.trim();
            const fallback = defs.get(node.data.type)?.displayName ?? node.data.type;
            g.patchNode(node.id, (n) => ({ ...n, data: { ...n.data, title: v && v !== fallback ? v : undefined } }));
          }
          onClose();
        }} />
      ) : (
        <MenuList items={items} onClose={onClose} label={`${target.kind} menu`} />
      )}
    </div>
  );
}
