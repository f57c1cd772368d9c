/**
 * Refit the view when the canvas changes size (a window resized, maximised, turned),
 * once the resizing has settled. Only a view the user has not moved since the last
 * fit is refitted: `refit` checks that (useGraphStore's `refit`, lib/viewfit.ts).
 */

import { type RefObject, useEffect, useRef } from "react";
import { debounce, resized, type Size } from "../lib/viewfit";

/** How long the canvas keeps its size before the view is refitted. */
export const REFIT_DEBOUNCE_MS = 150;

export function useRefitOnResize(target: RefObject<HTMLElement | null>, refit: () => void, ms = REFIT_DEBOUNCE_MS): void {
  const refitRef = useRef(refit);
  refitRef.current = refit;
  useEffect(() => {
    const el = target.current;
    if (!el || typeof ResizeObserver === "undefined") return;
    let last: Size | null = null;
    const later = debounce(() => refitRef.current(), ms);
    const observer = new ResizeObserver((entries) => {
      const rect = entries[entries.length - 1].contentRect;
      const now = { width: rect.width, height: rect.height };
      if (resized(last, now)) later();
      if (now.width > 0 && now.height > 0) last = now;
    });
    observer.observe(el);
    return () => {
      observer.disconnect();
      later.cancel();
    };
  }, [target, ms]);
}
