/**
 * Groups on the canvas, drawn behind the nodes in flow coordinates. Drag a group's
 * title bar to move it with the nodes inside it; drag its corner to resize it;
 * double-click the title to rename it; right-click the title for its menu. A click on
 * the title selects the group, and Delete (or Backspace) then removes it (its nodes stay),
 * as in ComfyUI.
 *
 * The groups live in React Flow's edge-label layer, between the links and the nodes: the
 * title bar and the corner are above the links, so a link drawn across them does not take
 * their clicks (in ComfyUI only a link's centre marker is clickable), while the group's
 * body is pushed below the links (z-index -1 in the viewport's stacking context; the group
 * itself makes no stacking context, hence left/top and not a transform).
 */

import { EdgeLabelRenderer, useReactFlow } from "@xyflow/react";
import { useCallback, useEffect, useState } from "react";
import type { SfEdge, SfNode } from "../canvas/flow";
import { GROUP_COLOR, type GroupBox, groupAround, nodesInside } from "../lib/groups";
import { NODE_HEIGHT, NODE_WIDTH, type Rect } from "../lib/layout";
import { maskEditorOpen } from "./maskEditorState";
import type { GraphStore } from "./useGraphStore";
import { isEditable } from "./useShortcuts";

/** The nodes' rectangles in flow coordinates (measured, or a typical size). */
export function nodeRects(nodes: readonly SfNode[], ids?: Set<string>): Map<string, Rect> {
  return new Map(nodes.filter((n) => !ids || ids.has(n.id)).map((n) => [n.id, {
    x: n.position.x, y: n.position.y,
    width: n.measured?.width ?? n.width ?? NODE_WIDTH, height: n.measured?.height ?? NODE_HEIGHT,
  }]));
}

/** A new group around the selected nodes; false when nothing is selected. */
export function groupSelection(g: GraphStore): boolean {
  const ids = new Set(g.state.current.nodes.filter((n) => n.selected).map((n) => n.id));
  if (!ids.size) return false;
  const box = groupAround([...nodeRects(g.state.current.nodes, ids).values()]);
  g.setGroups((gs) => [...gs, box]);
  return true;
}

/**
 * Whether Delete / Backspace now removes the selected group: not while a field is being
 * typed in, nor while a dialog or menu (the mask editor, the Examples browser) has the keyboard.
 */
export function deleteRemovesGroup(key: string, target: EventTarget | null, dialogOpen: boolean): boolean {
  return (key === "Delete" || key === "Backspace") && !isEditable(target) && !dialogOpen;
}

/** A group's title, or (`editing`: after a double-click anywhere on its bar, as in ComfyUI) its editor. */
function GroupTitle({ group, editing, onRename, onDone }: {
  group: GroupBox; editing: boolean; onRename(title: string): void; onDone(): void;
}) {
  if (editing) {
    return (
      <input
        className="sf-group-title-edit nodrag nopan"
        aria-label="group title"
        autoFocus
        defaultValue={group.title}
        onBlur={(e) => {
          onRename(e.target.value.trim() || group.title);
          onDone();
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter") (e.target as HTMLInputElement).blur();
          if (e.key === "Escape") onDone();
        }}
      />
    );
  }
  return <span>{group.title}</span>;
}

export function GroupLayer({ g, onMenu }: { g: GraphStore; onMenu(index: number, x: number, y: number): void }) {
  const rf = useReactFlow<SfNode, SfEdge>();
  const { setGroups, setNodes, setEdges, holdHistory } = g;
  /** The group selected by a click on its title (its index), or null. */
  const [selected, setSelected] = useState<number | null>(null);
  const [editing, setEditing] = useState<number | null>(null);
  const count = g.groups.length;
  // another group list (one removed or added, another graph opened): the index means another group
  useEffect(() => setSelected(null), [count]);

  useEffect(() => {
    if (selected === null) return;
    // a press anywhere but on its title (a node, the canvas, a link) unselects it, as in ComfyUI
    const onDown = (e: MouseEvent) => {
      const title = (e.target as Element | null)?.closest?.("[data-group-title]");
      if (title?.getAttribute("data-group-title") !== String(selected)) setSelected(null);
    };
    const onKey = (e: KeyboardEvent) => {
      const dialog = !!document.querySelector('[aria-modal="true"], [role="menu"]') || maskEditorOpen();
      if (!deleteRemovesGroup(e.key, e.target, dialog)) return;
      e.preventDefault();
      // one undo step, as the menu's Remove group (its nodes stay)
      setGroups((gs) => gs.filter((_, j) => j !== selected));
      setSelected(null);
    };
    window.addEventListener("mousedown", onDown, true);
    window.addEventListener("keydown", onKey);
    return () => {
      window.removeEventListener("mousedown", onDown, true);
      window.removeEventListener("keydown", onKey);
    };
  }, [selected, setGroups]);

  /** Select group `index` alone: the nodes and links selected before are not (Delete removes only it). */
  const select = useCallback((index: number, e: React.MouseEvent) => {
    if ((e.target as HTMLElement).tagName === "INPUT") return;
    setSelected(index);
    // a link or node that kept the keyboard focus would take the Delete (the drag's preventDefault keeps it)
    const active = document.activeElement as HTMLElement | null;
    if (active && active !== document.body && active.closest(".react-flow")) active.blur();
    setNodes((ns) => (ns.some((n) => n.selected) ? ns.map((n) => (n.selected ? { ...n, selected: false } : n)) : ns));
    setEdges((es) => (es.some((x) => x.selected) ? es.map((x) => (x.selected ? { ...x, selected: false } : x)) : es));
  }, [setNodes, setEdges]);

  /** Move (title bar) or resize (corner) group `index` with the mouse. */
  const startDrag = useCallback((index: number, e: React.MouseEvent, mode: "move" | "resize") => {
    if (e.button !== 0 || (e.target as HTMLElement).tagName === "INPUT") return;
    e.preventDefault();
    e.stopPropagation();
    const group = g.groups[index];
    const zoom = rf.getViewport().zoom;
    const inside = mode === "move" ? new Set(nodesInside(group, nodeRects(g.state.current.nodes))) : new Set<string>();
    const starts = new Map(g.state.current.nodes.filter((n) => inside.has(n.id)).map((n) => [n.id, { ...n.position }]));
    const [gx, gy, gw, gh] = group.bounding;
    const sx = e.clientX;
    const sy = e.clientY;
    holdHistory.current = true;
    const move = (ev: MouseEvent) => {
      const dx = (ev.clientX - sx) / zoom;
      const dy = (ev.clientY - sy) / zoom;
      const bounding: GroupBox["bounding"] = mode === "move"
        ? [Math.round(gx + dx), Math.round(gy + dy), gw, gh]
        : [gx, gy, Math.max(80, Math.round(gw + dx)), Math.max(60, Math.round(gh + dy))];
      setGroups((gs) => gs.map((x, i) => (i === index ? { ...x, bounding } : x)));
      if (starts.size) {
        setNodes((ns) => ns.map((n) => {
          const p = starts.get(n.id);
          return p ? { ...n, position: { x: Math.round(p.x + dx), y: Math.round(p.y + dy) } } : n;
        }));
      }
    };
    const up = () => {
      window.removeEventListener("mousemove", move);
      window.removeEventListener("mouseup", up);
      holdHistory.current = false;
      setGroups((gs) => [...gs]); // one undo step for the whole drag
    };
    window.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
  }, [g.groups, g.state, rf, setGroups, setNodes, holdHistory]);

  return (
    <EdgeLabelRenderer>
      {g.groups.map((group, i) => {
        const [x, y, w, h] = group.bounding;
        const color = group.color ?? GROUP_COLOR;
        return (
          <div key={i} className={`sf-group${selected === i ? " selected" : ""}`} data-group={i} role="group"
            aria-label={group.title} style={{ left: x, top: y, width: w, height: h }}>
            <div className="sf-group-body" style={{ borderColor: color, background: `${color}26` }} />
            <div
              className="sf-group-title nodrag nopan"
              data-group-title={i}
              data-selected={selected === i || undefined}
              style={{ background: `${color}99`, fontSize: group.font_size ? Math.min(48, group.font_size) : undefined }}
              title="Drag to move with its nodes; double-click to rename"
              onMouseDown={(e) => {
                if (editing === i) return; // clicks inside the title's editor
                if (e.button === 0 || e.button === 2) select(i, e);
                startDrag(i, e, "move");
              }}
              onDoubleClick={() => setEditing(i)}
              onContextMenu={(e) => {
                e.preventDefault();
                e.stopPropagation();
                onMenu(i, e.clientX, e.clientY);
              }}
            >
              <GroupTitle group={group} editing={editing === i} onDone={() => setEditing(null)}
                onRename={(title) => setGroups((gs) => gs.map((x, j) => (j === i ? { ...x, title } : x)))} />
            </div>
            <div className="sf-group-resize nodrag nopan" title="Drag to resize the group" onMouseDown={(e) => startDrag(i, e, "resize")} />
          </div>
        );
      })}
    </EdgeLabelRenderer>
  );
}
