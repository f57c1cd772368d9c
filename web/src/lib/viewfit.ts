/**
 * Whether a resized window refits the view (editor/useGraphStore.ts, App.tsx).
 *
 * A fit (on opening a graph, or the fit button) records the viewport it set. When the
 * canvas changes size, the view is fitted again only while it is still exactly where
 * that fit put it: any pan or zoom since (a drag, the wheel, the zoom buttons, the
 * minimap, a jump to an error) moved it, and the user's view is kept.
 */

export type Viewport = { x: number; y: number; zoom: number };

/** The same view, up to rounding (React Flow stores the transform as d3 computes it). */
export function sameViewport(a: Viewport, b: Viewport, eps = 0.5): boolean {
  return Math.abs(a.x - b.x) <= eps && Math.abs(a.y - b.y) <= eps && Math.abs(a.zoom - b.zoom) <= 1e-4;
}

/** The last fit: the viewport it set and how it was made (`how` redoes it). */
export class FitTracker<How> {
  private last: { viewport: Viewport; how: How } | null = null;

  /** A fit just set `viewport`. */
  fitted(viewport: Viewport, how: How): void {
    this.last = { viewport: { ...viewport }, how };
  }

  /** The view was set another way (a saved viewport opened, an empty graph). */
  forget(): void {
    this.last = null;
  }

  /** How to fit again, if the view `now` is still where the last fit left it; else null. */
  refit(now: Viewport): How | null {
    return this.last && sameViewport(this.last.viewport, now) ? this.last.how : null;
  }
}

export type Debounced = { (): void; cancel(): void };

/** `fn` once, `ms` after the last of a burst of calls (a window being dragged to a new size). */
export function debounce(fn: () => void, ms: number): Debounced {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const call = (() => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      fn();
    }, ms);
  }) as Debounced;
  call.cancel = () => {
    clearTimeout(timer);
    timer = undefined;
  };
  return call;
}

export type Size = { width: number; height: number };

/** Whether a size change is real (ResizeObserver also reports the first size, and sub-pixel noise). */
export function resized(before: Size | null, now: Size): boolean {
  if (now.width <= 0 || now.height <= 0) return false; // hidden: nothing to fit into
  return before !== null && (Math.abs(before.width - now.width) >= 1 || Math.abs(before.height - now.height) >= 1);
}
