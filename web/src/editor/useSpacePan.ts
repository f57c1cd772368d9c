/**
 * Hold Space and drag to pan the canvas, wherever the drag starts: over empty canvas, a
 * node, a link or a group (litegraph's behaviour in ComfyUI). React Flow's own Space pan
 * works over empty canvas only: a node takes the drag and moves. While Space is held the
 * canvas shows a grab cursor; the drag moves the view, and the press selects and moves nothing.
 */

import { useReactFlow } from "@xyflow/react";
import { type RefObject, useEffect, useRef } from "react";
import { isEditable } from "./useShortcuts";

/** The canvas's class while Space is held (a grab cursor everywhere on it). */
export const SPACE_HELD_CLASS = "sf-space-held";
/** The canvas's class while a Space drag pans it. */
export const SPACE_PANNING_CLASS = "sf-space-panning";

/** Parts of the canvas a Space drag leaves alone: the minimap and the zoom buttons have their own drag. */
const NOT_PANNED = ".react-flow__panel, .sf-help, [role=dialog]";

export type Viewport = { x: number; y: number; zoom: number };

/** The view after the pointer moved (dx, dy) screen pixels from where a pan started at `start`. */
export function pannedViewport(start: Viewport, dx: number, dy: number): Viewport {
  return { x: start.x + dx, y: start.y + dy, zoom: start.zoom };
}

export function useSpacePan(canvas: RefObject<HTMLElement | null>, onPanned?: () => void): void {
  const rf = useReactFlow();
  // a new callback each render must not re-run the effect (that would let go of a held Space)
  const panned = useRef(onPanned);
  panned.current = onPanned;
  useEffect(() => {
    const el = canvas.current;
    if (!el) return;
    let held = false;
    let drag: { id: number; x: number; y: number; start: Viewport; moved: boolean } | null = null;

    const setHeld = (on: boolean) => {
      held = on;
      el.classList.toggle(SPACE_HELD_CLASS, on);
    };
    const onKeyDown = (e: KeyboardEvent) => {
      if (e.code !== "Space" || e.ctrlKey || e.metaKey || e.altKey || isEditable(e.target)) return;
      // the page or the canvas has the keyboard; a focused button or link keeps Space as its own key
      const t = e.target as HTMLElement | null;
      const onCanvas = !t || t === document.body || t === document.documentElement || el.contains(t);
      if (!onCanvas || t?.closest?.("button, a, [role=button]")) return;
      e.preventDefault(); // no page scroll
      if (!held) setHeld(true);
    };
    const onKeyUp = (e: KeyboardEvent) => {
      if (e.code === "Space" && held) setHeld(false);
    };
    const reset = () => {
      setHeld(false);
      stop();
    };

    const onMove = (e: PointerEvent) => {
      if (!drag || e.pointerId !== drag.id) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 2) return;
      drag.moved = true;
      void rf.setViewport(pannedViewport(drag.start, dx, dy));
    };
    const onUp = (e: PointerEvent) => {
      if (!drag || e.pointerId !== drag.id) return;
      const moved = drag.moved;
      stop();
      if (moved) panned.current?.();
    };
    function stop() {
      drag = null;
      el!.classList.remove(SPACE_PANNING_CLASS);
      window.removeEventListener("pointermove", onMove, true);
      window.removeEventListener("pointerup", onUp, true);
      window.removeEventListener("pointercancel", onUp, true);
    }
    const onDown = (e: PointerEvent) => {
      if (!held || drag || e.button !== 0) return;
      const t = e.target as Element | null;
      if (!t || t.closest(NOT_PANNED) || isEditable(t)) return;
      // the node, link or handle under the pointer gets nothing: cancelling the pointerdown
      // also cancels the mouse events React Flow drags, connects and selects with
      e.preventDefault();
      e.stopPropagation();
      drag = { id: e.pointerId, x: e.clientX, y: e.clientY, start: rf.getViewport(), moved: false };
      el.classList.add(SPACE_PANNING_CLASS);
      window.addEventListener("pointermove", onMove, true);
      window.addEventListener("pointerup", onUp, true);
      window.addEventListener("pointercancel", onUp, true);
    };
    // the click after a Space press selects nothing
    const onClick = (e: MouseEvent) => {
      if (held) {
        e.preventDefault();
        e.stopPropagation();
      }
    };

    const blockWhileHeld = (e: MouseEvent) => {
      if (held && e.button === 0 && !(e.target as Element | null)?.closest?.(NOT_PANNED)) e.stopPropagation();
    };
    // [target, event, listener, capture]: the canvas's own ones capture, before React Flow
    const listeners: [EventTarget, string, EventListener, boolean][] = [
      [window, "keydown", onKeyDown as EventListener, false],
      [window, "keyup", onKeyUp as EventListener, false],
      [window, "blur", reset, false],
      [el, "pointerdown", onDown as EventListener, true],
      [el, "mousedown", blockWhileHeld as EventListener, true],
      [el, "click", onClick as EventListener, true],
    ];
    for (const [target, type, fn, capture] of listeners) target.addEventListener(type, fn, capture);
    return () => {
      reset();
      for (const [target, type, fn, capture] of listeners) target.removeEventListener(type, fn, capture);
    };
  }, [canvas, rf]);
}
