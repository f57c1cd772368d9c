/**
 * One tooltip for the whole page: any element with a `data-tooltip` attribute
 * (node inputs and outputs, a node's header) shows its text after a short hover.
 * Drawn in the page rather than as the browser's `title`, so it is styled, wraps
 * long text, and can be tested.
 */

import { useEffect, useState } from "react";

const DELAY_MS = 400;

type Tip = { text: string; x: number; y: number };

export function TooltipLayer() {
  const [tip, setTip] = useState<Tip | null>(null);

  useEffect(() => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let current: Element | null = null;
    const hide = () => {
      clearTimeout(timer);
      current = null;
      setTip(null);
    };
    // Tracked on mousemove as well as mouseover: a node that moves or gains its
    // tooltip after the pointer arrived (the view settling, definitions loading)
    // is picked up on the next small move instead of never.
    const over = (e: MouseEvent) => {
      const el = e.target instanceof Element ? e.target.closest("[data-tooltip]") : null;
      const text = el?.getAttribute("data-tooltip");
      if (el === current && (timer !== undefined || !text)) return;
      clearTimeout(timer);
      timer = undefined;
      current = el;
      setTip(null);
      if (!el || !text) return;
      const { clientX, clientY } = e;
      timer = setTimeout(() => {
        // the pointer may have been left behind by a view that moved under it
        const still = document.elementFromPoint(clientX, clientY)?.closest("[data-tooltip]");
        if (still !== el) {
          current = null;
          timer = undefined;
          return;
        }
        // beside the pointer, kept inside the window
        const x = Math.min(clientX + 12, window.innerWidth - 350);
        const y = clientY + 18 > window.innerHeight - 80 ? clientY - 60 : clientY + 18;
        setTip({ text, x: Math.max(4, x), y });
      }, DELAY_MS);
    };
    document.addEventListener("mouseover", over);
    document.addEventListener("mousemove", over, { passive: true });
    document.addEventListener("mousedown", hide, true);
    document.addEventListener("wheel", hide, { passive: true });
    document.addEventListener("keydown", hide);
    return () => {
      clearTimeout(timer);
      document.removeEventListener("mouseover", over);
      document.removeEventListener("mousemove", over);
      document.removeEventListener("mousedown", hide, true);
      document.removeEventListener("wheel", hide);
      document.removeEventListener("keydown", hide);
    };
  }, []);

  if (!tip) return null;
  return (
    <div className="sf-tooltip" role="tooltip" data-testid="tooltip" style={{ left: tip.x, top: tip.y }}>
      {tip.text}
    </div>
  );
}
