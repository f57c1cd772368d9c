/**
 * The canvas's dot grid, cheaper to pan than React Flow's <Background>, an SVG pattern
 * that React re-renders with a new offset on every pan frame.
 *
 * The dots are a CSS pattern whose offset is written straight to the DOM from React
 * Flow's store (no React render per frame). While only the nodes in view are mounted
 * (`composited`, a large graph), the pattern lies on its own compositor layer one cell
 * larger than the pane on each side, and a pan only moves that layer by less than one
 * cell: nothing is re-rasterised (bench/bench_canvas.py: chromium's CPU per pan frame of
 * a 300-node graph at zoom 1 fell by about a third). With every node mounted that layer
 * costs more than it saves (the nodes above it then get a layer of their own, rasterised
 * far beyond the view: twice the CPU per frame, measured), so there the pattern's
 * background-position moves instead and the pane repaints as before.
 */

import { useStoreApi } from "@xyflow/react";
import { useEffect, useRef } from "react";
import { dotGridCell } from "../lib/layout";

/** `gap`: the dots' spacing in flow units; `size`: their diameter at zoom 1 (px). */
export function DotGrid({ gap = 24, size = 1, composited = false }: { gap?: number; size?: number; composited?: boolean }) {
  const api = useStoreApi();
  const layer = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const el = layer.current;
    if (!el) return;
    let cell = 0;
    const place = ([x, y, zoom]: [number, number, number]) => {
      // zoomed out, thinned (every 2nd, 4th… dot) so the dots never blur into a moiré
      const { cell: c, thinned } = dotGridCell(gap, zoom);
      if (!(c > 0)) return;
      if (c !== cell) {
        cell = c;
        const r = Math.max(0.5, (size * zoom) / 2);
        el.style.opacity = thinned ? "0.6" : "";
        el.dataset.cell = String(c);
        el.style.backgroundSize = `${c}px ${c}px`;
        el.style.backgroundImage = `radial-gradient(circle at ${c / 2}px ${c / 2}px, var(--sf-dot-color, #3a3e46) ${r + 0.3}px, transparent ${r + 0.9}px)`;
        el.style.inset = composited ? `${-c}px` : "0";
      }
      // The offset modulo one cell (the pattern looks the same one cell on); the dots sit
      // half a cell off the flow's origin, where React Flow's <Background> put them.
      const ox = ((x % c) + c) % c;
      const oy = ((y % c) + c) % c;
      if (composited) el.style.transform = `translate3d(${ox}px, ${oy}px, 0)`;
      else el.style.backgroundPosition = `${ox}px ${oy}px`;
    };
    el.style.transform = "";
    el.style.backgroundPosition = "";
    let last = api.getState().transform;
    place(last);
    return api.subscribe((s) => {
      if (s.transform !== last) {
        last = s.transform;
        place(last);
      }
    });
  }, [api, gap, size, composited]);

  return (
    <div className="sf-dotgrid" aria-hidden="true">
      <div ref={layer} className={`sf-dotgrid-layer${composited ? " sf-dotgrid-composited" : ""}`} />
    </div>
  );
}
