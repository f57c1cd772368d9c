/**
 * Panning from the minimap (editor/useMinimapPan.ts).
 *
 * A drag moves the view's rectangle in the minimap with the pointer, as React Flow's
 * pannable MiniMap does, but at the minimap's scale when the drag began: React Flow's
 * scale grows as the view leaves the graph (the minimap then shows more empty space), so
 * each move went further and a short drag threw the view thousands of pixels away. The
 * view's centre also stays over the graph, so the graph never leaves the canvas.
 */

import type { Rect, Viewport } from "./layout";

export type Size = { width: number; height: number };

/**
 * The view `vp` of a `pane`-sized canvas moved as little as needed for its centre to lie
 * over `bounds` (the graph's box, flow coordinates); unchanged when it already does.
 */
export function keepOnGraph(vp: Viewport, pane: Size, bounds: Rect): Viewport {
  const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
  const cx = (pane.width / 2 - vp.x) / vp.zoom;
  const cy = (pane.height / 2 - vp.y) / vp.zoom;
  const x = clamp(cx, bounds.x, bounds.x + bounds.width);
  const y = clamp(cy, bounds.y, bounds.y + bounds.height);
  if (x === cx && y === cy) return vp;
  return { x: pane.width / 2 - x * vp.zoom, y: pane.height / 2 - y * vp.zoom, zoom: vp.zoom };
}

/**
 * The view after dragging the minimap by (`dx`, `dy`) screen pixels from the view `start`:
 * the view moves `scale` flow units per pixel (the minimap's scale when the drag began),
 * kept over `bounds` when there is a graph.
 */
export function minimapPan(start: Viewport, dx: number, dy: number, scale: number, pane: Size, bounds?: Rect): Viewport {
  const vp = { x: start.x - dx * scale * start.zoom, y: start.y - dy * scale * start.zoom, zoom: start.zoom };
  return bounds ? keepOnGraph(vp, pane, bounds) : vp;
}

/** Flow units per pixel of a minimap drawn `width`×`height` px showing its `viewBox` (scaled to fit, as SVG's default does). */
export function minimapScale(viewBox: Size, width: number, height: number): number {
  if (width <= 0 || height <= 0) return 0;
  return Math.max(viewBox.width / width, viewBox.height / height);
}
