/**
 * Alt+drag on a node clones it, as in ComfyUI (litegraph): the clone, carrying the node's
 * widget values and none of its links, is what the drag moves; the original stays where it
 * was, with its links. The clone and its move are one undo step.
 *
 * React Flow's drag (d3-drag on each node) moves the node it was pressed on, so the Alt press
 * is kept from it; once the pointer moves, the clone is added over the original and the press
 * is handed to the clone (a mousedown at the press's point: d3-drag then follows the real
 * pointer until it is let go). A plain Alt+click still selects the node.
 */

import { useReactFlow } from "@xyflow/react";
import { type RefObject, useEffect, useRef } from "react";
import type { SfEdge, SfNode } from "../canvas/flow";
import { nextNodeId } from "../lib/graph";
import type { GraphStore } from "./useGraphStore";
import { isEditable } from "./useShortcuts";
import { SPACE_HELD_CLASS } from "./useSpacePan";

/** Pointer travel (screen px) that makes an Alt press a clone's drag rather than a click. */
const CLONE_DISTANCE = 3;
/** Parts of a node whose press is theirs (a widget, a dot, a resize corner): no clone. */
const OWN_PRESS = ".nodrag, .react-flow__handle, .react-flow__resize-control";
/** How many frames the clone may take to be on the canvas before the drag is given up. */
const MAX_FRAMES = 30;

/** A copy of `node` as `id` at the same place, selected: its values, title, colour, mode and size, not pinned. */
export function clonedNode(node: SfNode, id: string): SfNode {
  const { pinned: _pinned, ...data } = structuredClone(node.data);
  const copy: SfNode = { id, type: node.type, position: { ...node.position }, data, selected: true };
  if (node.width !== undefined) copy.width = node.width;
  if (node.height !== undefined) copy.height = node.height;
  // measured already: shown at once (React Flow hides a node until it is measured)
  if (node.measured) copy.measured = { ...node.measured };
  return copy;
}

export function useAltDragClone(canvas: RefObject<HTMLElement | null>, g: GraphStore): void {
  const rf = useReactFlow<SfNode, SfEdge>();
  // the latest store without re-running the effect (a gesture in progress would be dropped)
  const store = useRef(g);
  store.current = g;
  useEffect(() => {
    const el = canvas.current;
    if (!el) return;
    /** The Alt press on node `id`, until the pointer moves or is let go. */
    let press: { id: string; x: number; y: number } | null = null;
    /** The clone being dragged: `handed` once its own drag has the pointer. */
    let clone: { id: string; x: number; y: number; last: { x: number; y: number }; handed: boolean } | null = null;
    let frame = 0;

    const listen = (on: boolean) => {
      for (const [type, fn] of [["mousemove", onMove], ["mouseup", onUp], ["blur", onBlur]] as const) {
        if (on) window.addEventListener(type, fn as EventListener, true);
        else window.removeEventListener(type, fn as EventListener, true);
      }
    };
    const release = () => {
      const s = store.current;
      if (!s.holdHistory.current) return;
      s.holdHistory.current = false;
      // after the drag's last change: a new array records the clone and its move as one step
      setTimeout(() => s.setNodes((ns) => ns.slice()));
    };
    const stop = () => {
      press = null;
      clone = null;
      cancelAnimationFrame(frame);
      listen(false);
      release();
    };

    /** Hand the press to the clone once React Flow has drawn it (and given it its drag). */
    const handOver = (tries: number) => {
      const c = clone;
      if (!c || c.handed) return;
      const node = el.querySelector(`.react-flow__node[data-id="${CSS.escape(c.id)}"]`);
      if (!node || tries < 2) { // one frame more after it appears: its drag is attached in an effect
        if (tries < MAX_FRAMES) frame = requestAnimationFrame(() => handOver(tries + 1));
        return;
      }
      c.handed = true;
      const at = (type: string, x: number, y: number, buttons: number) => new MouseEvent(type, {
        bubbles: true, cancelable: true, view: window, clientX: x, clientY: y, button: 0, buttons,
      });
      // React Flow's drag starts on the first move past its 1 px threshold, holding the node
      // where the pointer is then: pressed 2 px off, that first move comes back to the press,
      // and the next one takes the clone to where the pointer is now
      node.dispatchEvent(at("mousedown", c.x - 2, c.y, 1));
      node.dispatchEvent(at("mousemove", c.x, c.y, 1));
      node.dispatchEvent(at("mousemove", c.last.x, c.last.y, 1));
    };

    const startClone = (e: MouseEvent) => {
      const p = press!;
      press = null;
      const s = store.current;
      const original = s.state.current.nodes.find((n) => n.id === p.id);
      if (!original) return stop();
      s.settleNow(); // an edit made just before stays its own undo step
      s.holdHistory.current = true;
      const id = nextNodeId(s.state.current.nodes.map((n) => n.id));
      const next = [...s.state.current.nodes.map((n) => (n.selected ? { ...n, selected: false } : n)), clonedNode(original, id)];
      s.state.current = { ...s.state.current, nodes: next };
      s.setNodes(next);
      clone = { id, x: p.x, y: p.y, last: { x: e.clientX, y: e.clientY }, handed: false };
      frame = requestAnimationFrame(() => handOver(0));
    };

    const onDown = (e: MouseEvent) => {
      if (!e.altKey || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0 || press || clone) return;
      if (el.classList.contains(SPACE_HELD_CLASS)) return; // Space+drag pans
      const t = e.target as Element | null;
      const id = t?.closest(".react-flow__node")?.getAttribute("data-id");
      if (!t || !id || t.closest(OWN_PRESS) || isEditable(t)) return;
      // the original's own drag never starts: it stays where it is
      e.stopPropagation();
      e.preventDefault();
      press = { id, x: e.clientX, y: e.clientY };
      listen(true);
    };
    const onMove = (e: MouseEvent) => {
      if (clone) {
        clone.last = { x: e.clientX, y: e.clientY };
        return;
      }
      if (!press) return;
      if (!(e.buttons & 1)) return stop();
      if (Math.hypot(e.clientX - press.x, e.clientY - press.y) >= CLONE_DISTANCE) startClone(e);
    };
    const onUp = (e: MouseEvent) => {
      const c = clone;
      if (c && !c.handed) {
        // let go before the clone was drawn: it goes where the pointer went
        const zoom = rf.getViewport().zoom;
        const dx = (e.clientX - c.x) / zoom;
        const dy = (e.clientY - c.y) / zoom;
        store.current.setNodes((ns) => ns.map((n) => (n.id === c.id
          ? { ...n, position: { x: Math.round(n.position.x + dx), y: Math.round(n.position.y + dy) } } : n)));
      }
      stop(); // (runs before the clone's own drag ends: that end is the step recorded)
    };
    const onBlur = () => stop();

    el.addEventListener("mousedown", onDown, true);
    return () => {
      el.removeEventListener("mousedown", onDown, true);
      stop();
    };
  }, [canvas, rf]);
}
