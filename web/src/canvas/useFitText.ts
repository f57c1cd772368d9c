/**
 * Shrinks an input's font until its whole text fits (lib/fittext.ts): measured with a canvas
 * in the input's own font, again when the text changes or the field is resized (a node made
 * narrower or wider). Returns whether the text is cut even at the smallest size.
 */

import { type RefObject, useLayoutEffect, useState } from "react";
import { fitFontSize, stillCut } from "../lib/fittext";

let measurer: CanvasRenderingContext2D | null = null;

function textWidth(text: string, style: CSSStyleDeclaration, sizePx: number): number {
  measurer ??= document.createElement("canvas").getContext("2d");
  if (!measurer) return 0;
  measurer.font = `${style.fontStyle} ${style.fontWeight} ${sizePx}px ${style.fontFamily}`;
  return measurer.measureText(text).width;
}

export function useFitText(ref: RefObject<HTMLInputElement | null>, text: string, min = 9): boolean {
  const [cut, setCut] = useState(false);
  useLayoutEffect(() => {
    const el = ref.current;
    if (!el) return;
    const fit = () => {
      el.style.fontSize = "";
      el.style.height = "";
      const style = getComputedStyle(el);
      const base = parseFloat(style.fontSize);
      const available = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight) - 1;
      if (!(base > 0) || !(available > 0)) return; // not laid out (collapsed, hidden)
      const width = textWidth(el.value, style, base);
      const size = fitFontSize(width, available, base, min);
      if (size < base) {
        el.style.height = `${el.offsetHeight}px`; // the field keeps its height (border-box), the node its layout
        el.style.fontSize = `${size}px`;
      }
      setCut(stillCut(width, available, base, size));
    };
    fit();
    const observer = typeof ResizeObserver === "undefined" ? null : new ResizeObserver(fit);
    observer?.observe(el);
    return () => observer?.disconnect();
  }, [ref, text, min]);
  return cut;
}
