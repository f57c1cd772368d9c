/**
 * Dragging in the minimap pans the view (lib/minimap.ts): the view's rectangle follows the
 * pointer at the minimap's scale when the drag began, and the graph never leaves the
 * canvas. It replaces React Flow's pannable MiniMap, whose scale grows as the view moves
 * away from the graph, so that a short drag threw the view thousands of pixels off. A press
 * on the minimap is the minimap's alone: it never reaches a node's handle (a link drag) or
 * the canvas drawn under it.
 */

import { useReactFlow } from "@xyflow/react";
import { type RefObject, useEffect } from "react";
import { minimapPan, minimapScale } from "../lib/minimap";

export function useMinimapPan(target: RefObject<HTMLElement | null>): void {
  const rf = useReactFlow();
  useEffect(() => {
    const el = target.current;
    if (!el) return;
    const down = (e: PointerEvent) => {
      const minimap = (e.target as Element | null)?.closest?.(".react-flow__minimap");
      if (!minimap) return;
      // the minimap's own: no mousedown follows for React Flow's handlers or the canvas
      e.preventDefault();
      e.stopPropagation();
      const svg = minimap.querySelector("svg");
      const pane = el.querySelector(".react-flow")?.getBoundingClientRect();
      if (e.button !== 0 || !svg || !pane) return;
      const box = svg.viewBox.baseVal;
      const scale = minimapScale({ width: box.width, height: box.height }, svg.clientWidth, svg.clientHeight);
      if (!scale) return;
      const start = rf.getViewport();
      const nodes = rf.getNodes();
      const bounds = nodes.length ? rf.getNodesBounds(nodes) : undefined;
      const from = { x: e.clientX, y: e.clientY };
      const move = (m: PointerEvent) => {
        void rf.setViewport(minimapPan(start, m.clientX - from.x, m.clientY - from.y, scale, pane, bounds));
      };
      const up = () => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        window.removeEventListener("pointercancel", up);
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
      window.addEventListener("pointercancel", up);
    };
    el.addEventListener("pointerdown", down, true);
    return () => el.removeEventListener("pointerdown", down, true);
  }, [target, rf]);
}
