/** While `open`, remember what had the focus; when it closes (or unmounts), give the focus back (lib/focusreturn.ts). */

import { type RefObject, useEffect, useLayoutEffect, useRef } from "react";
import { returnFocus } from "../lib/focusreturn";

export function useReturnFocus(open: boolean, box?: RefObject<HTMLElement | null>): void {
  useLayoutEffect(() => {
    if (!open) return;
    // a layout effect runs before any effect that moves the focus into the dialog
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    const el = box?.current ?? null;
    return () => {
      // after React removed the dialog: the focus it held is lost by then
      const wasInside = el && el.contains(document.activeElement);
      queueMicrotask(() => returnFocus(opener, document, wasInside ? { contains: () => true } : null));
    };
  }, [open, box]);
}

/**
 * A panel that takes the focus as it opens (a screen reader reads it; Tab goes on inside)
 * and gives it back to what opened it as it closes: the ref for its element (tabIndex -1).
 */
export function usePanelFocus<T extends HTMLElement>(): RefObject<T | null> {
  const box = useRef<T>(null);
  useReturnFocus(true, box);
  useEffect(() => box.current?.focus({ preventScroll: true }), []);
  return box;
}
