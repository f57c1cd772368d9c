/**
 * The mask editor (ComfyUI's "Open in MaskEditor"): a full-window overlay over a Load Image
 * node's image where the user paints the area to mask. The mask the image already carries
 * (its alpha) is where painting starts. Save uploads the mask with `POST /upload/mask`; the
 * server stores the image with the mask as its alpha in input/clipspace/, and that file
 * becomes the node's `image` value, so Load Image's MASK output is what was painted.
 * Cancel or Escape closes without changes; a failed save keeps the editor open.
 *
 * Painting is on a mask of the image's own size (at most 4096 a side, lib/maskeditor.ts),
 * drawn over the image as a tinted layer; the view zooms (wheel) and pans (right or middle
 * drag, or Space + drag) without touching the mask.
 */

import { useCallback, useEffect, useLayoutEffect, useRef, useState, type PointerEvent as ReactPointerEvent } from "react";
import { createRoot } from "react-dom/client";
import { channelUrl, uploadMask } from "../api";
import { trapTab } from "../lib/focustrap";
import { parseAnnotated } from "../lib/feedback";
import {
  type Brush, defaultRadius, fitScale, invertMask, MaskHistory, maskFileName, maskFromAlphaView, maskToAlpha,
  overlayPixels, type Rect, savedImageValue, sizeIssue, stampDab, strokeSegment, unionRect,
} from "../lib/maskeditor";
import { setMaskEditorOpen } from "./maskEditorState";
import { Toasts, useToasts } from "./Toasts";

export type MaskEditorOptions = {
  /** The node's image value ("x.png", "clipspace/y.png [input]"). */
  image: string;
  /** Called with the saved file's annotated name ("clipspace/clipspace-mask-1.png [input]"). */
  onSave(value: string): void;
};

const OVERLAY_COLOR: [number, number, number] = [255, 40, 120];
const MAX_RADIUS = 250;
const MIN_ZOOM = 0.02;
const MAX_ZOOM = 32;

let current: { close(): void } | null = null;

/** Open the editor over the whole window (one at a time). */
export function openMaskEditor(opts: MaskEditorOptions): void {
  if (current) return;
  const host = document.createElement("div");
  document.body.appendChild(host);
  const root = createRoot(host);
  const before = document.activeElement instanceof HTMLElement ? document.activeElement : null;
  const close = () => {
    if (current !== handle) return;
    current = null;
    setMaskEditorOpen(false);
    // not inside the root's own event handling
    setTimeout(() => {
      root.unmount();
      host.remove();
      if (before?.isConnected) before.focus();
    }, 0);
  };
  const handle = { close };
  current = handle;
  setMaskEditorOpen(true);
  root.render(<MaskEditor {...opts} onClose={close} />);
}

type Loaded = { width: number; height: number; src: string; mask: Uint8Array };
type View = { scale: number; x: number; y: number };

function loadImage(src: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be loaded"));
    img.src = src;
  });
}

async function loadMask(image: string): Promise<Loaded> {
  const ref = parseAnnotated(image);
  const src = channelUrl(ref, "rgb");
  const [rgb, alpha] = await Promise.all([loadImage(src), loadImage(channelUrl(ref, "a"))]);
  const width = rgb.naturalWidth;
  const height = rgb.naturalHeight;
  const issue = sizeIssue(width, height);
  if (issue) throw new Error(issue);
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new Error("this browser gives no canvas to paint on");
  ctx.drawImage(alpha, 0, 0, width, height);
  const mask = maskFromAlphaView(ctx.getImageData(0, 0, width, height).data, width, height);
  return { width, height, src, mask };
}

function MaskEditor({ image, onSave, onClose }: MaskEditorOptions & { onClose(): void }) {
  const [loaded, setLoaded] = useState<Loaded | null>(null);
  const [failed, setFailed] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    loadMask(image).then(
      (l) => live && setLoaded(l),
      (e) => live && setFailed(`Cannot open ${image} in the mask editor: ${(e as Error).message}`),
    );
    return () => {
      live = false;
    };
  }, [image]);
  const dialog = useRef<HTMLDivElement>(null);
  useEffect(() => dialog.current?.focus(), []);
  // until the painter is up (it handles its own keys): Escape closes, no key reaches the canvas
  const waiting = !loaded;
  useEffect(() => {
    if (!waiting) return;
    const onKey = (e: KeyboardEvent) => {
      e.stopPropagation();
      if (e.key === "Escape") onClose();
      else trapTab(e, dialog.current); // modal: Tab stays on its Cancel
    };
    window.addEventListener("keydown", onKey, true);
    return () => window.removeEventListener("keydown", onKey, true);
  }, [waiting, onClose]);

  if (loaded) return <Painter image={image} loaded={loaded} onSave={onSave} onClose={onClose} />;
  return (
    <div className="sf-maskeditor" role="dialog" aria-modal="true" aria-label="Mask editor" tabIndex={-1} ref={dialog}>
      <div className="sf-maskeditor-message" role={failed ? "alert" : "status"}>
        <p>{failed ?? "Loading the image…"}</p>
        <button type="button" onClick={onClose}>{failed ? "Close" : "Cancel"}</button>
      </div>
    </div>
  );
}

function Painter({ image, loaded, onSave, onClose }: { image: string; loaded: Loaded; onSave(v: string): void; onClose(): void }) {
  const { width, height, mask } = loaded;
  const { toasts, notify, dismiss } = useToasts();
  const [tool, setTool] = useState<"brush" | "eraser">("brush");
  const [radius, setRadius] = useState(() => defaultRadius(width, height));
  const [hardness, setHardness] = useState(0.8);
  const [opacity, setOpacity] = useState(1);
  const [view, setView] = useState<View>({ scale: 1, x: 0, y: 0 });
  const [saving, setSaving] = useState(false);
  const [, setVersion] = useState(0); // the undo buttons follow the history
  const history = useRef(new MaskHistory()).current;
  const root = useRef<HTMLDivElement>(null);
  const viewport = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const cursor = useRef<HTMLDivElement>(null);
  const fitted = useRef(true);
  const spaceDown = useRef(false);
  const gesture = useRef<
    | { kind: "paint"; pointer: number; last: [number, number] }
    | { kind: "pan"; pointer: number; x: number; y: number; start: View }
    | null
  >(null);
  const viewRef = useRef(view);
  viewRef.current = view;
  const brushRef = useRef<Brush>({ radius, hardness, opacity, erase: tool === "eraser" });
  brushRef.current = { radius, hardness, opacity, erase: tool === "eraser" };

  const draw = useCallback((rect: Rect | null) => {
    const ctx = canvas.current?.getContext("2d");
    if (!ctx || !rect) return;
    const px = overlayPixels(mask, width, rect, OVERLAY_COLOR, 0.65);
    ctx.putImageData(new ImageData(px, rect.w, rect.h), rect.x, rect.y);
  }, [mask, width]);
  const drawAll = useCallback(() => draw({ x: 0, y: 0, w: width, h: height }), [draw, width, height]);
  useLayoutEffect(drawAll, [drawAll]);

  const fit = useCallback(() => {
    const box = viewport.current?.getBoundingClientRect();
    if (!box) return;
    const scale = fitScale(width, height, box.width - 32, box.height - 32);
    fitted.current = true;
    setView({ scale, x: (box.width - width * scale) / 2, y: (box.height - height * scale) / 2 });
  }, [width, height]);
  useLayoutEffect(() => {
    fit();
    const onResize = () => fitted.current && fit();
    window.addEventListener("resize", onResize);
    return () => window.removeEventListener("resize", onResize);
  }, [fit]);

  const zoomAt = useCallback((factor: number, sx?: number, sy?: number) => {
    const box = viewport.current?.getBoundingClientRect();
    if (!box) return;
    const v = viewRef.current;
    const cx = sx ?? box.width / 2;
    const cy = sy ?? box.height / 2;
    const scale = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, v.scale * factor));
    fitted.current = false;
    setView({ scale, x: cx - ((cx - v.x) * scale) / v.scale, y: cy - ((cy - v.y) * scale) / v.scale });
  }, []);

  useEffect(() => {
    const el = viewport.current;
    if (!el) return;
    const onWheel = (e: WheelEvent) => {
      e.preventDefault();
      const box = el.getBoundingClientRect();
      zoomAt(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), e.clientX - box.left, e.clientY - box.top);
    };
    el.addEventListener("wheel", onWheel, { passive: false });
    return () => el.removeEventListener("wheel", onWheel);
  }, [zoomAt]);

  const change = useCallback((fn: () => void) => {
    history.record(mask);
    fn();
    drawAll();
    setVersion((n) => n + 1);
  }, [history, mask, drawAll]);
  const undo = useCallback(() => {
    if (history.undo(mask)) {
      drawAll();
      setVersion((n) => n + 1);
    }
  }, [history, mask, drawAll]);
  const redo = useCallback(() => {
    if (history.redo(mask)) {
      drawAll();
      setVersion((n) => n + 1);
    }
  }, [history, mask, drawAll]);

  const save = useCallback(async () => {
    if (saving) return;
    setSaving(true);
    try {
      const c = document.createElement("canvas");
      c.width = width;
      c.height = height;
      const ctx = c.getContext("2d");
      if (!ctx) throw new Error("this browser gives no canvas to draw the mask on");
      ctx.putImageData(new ImageData(maskToAlpha(mask), width, height), 0, 0);
      const blob = await new Promise<Blob | null>((resolve) => c.toBlob(resolve, "image/png"));
      if (!blob) throw new Error("the mask could not be encoded as PNG");
      const reply = await uploadMask(blob, maskFileName(), parseAnnotated(image));
      onSave(savedImageValue(reply));
      onClose();
    } catch (e) {
      notify(`Cannot save the mask: ${(e as Error).message}`, "error");
      setSaving(false);
    }
  }, [saving, width, height, mask, image, onSave, onClose, notify]);

  // Keys while open: the editor's own, and none reach the canvas underneath (its Delete,
  // Ctrl+Z, Ctrl+A would change the graph unseen).
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      e.stopPropagation();
      const target = e.target as HTMLElement | null;
      // a text field takes its letters; a focused button or slider (the usual state after
      // a click) does not keep B, E or Space from the editor
      const onControl = !!target?.closest("input:not([type=range]):not([type=checkbox]), select, textarea");
      const mod = e.ctrlKey || e.metaKey;
      const key = e.key.toLowerCase();
      if (e.key === "Escape") {
        e.preventDefault();
        if (!saving) onClose();
      } else if (mod && key === "z") {
        e.preventDefault();
        if (e.shiftKey) redo();
        else undo();
      } else if (mod && key === "y") {
        e.preventDefault();
        redo();
      } else if (mod && key === "s") {
        e.preventDefault();
        void save();
      } else if (!mod && (e.key === "[" || e.key === "]")) {
        setRadius((r) => Math.min(MAX_RADIUS, Math.max(1, Math.round(e.key === "[" ? r / 1.2 : r * 1.2 + 0.5))));
      } else if (!mod && !onControl && (key === "b" || key === "e")) {
        setTool(key === "b" ? "brush" : "eraser");
      } else if (e.key === " " && !onControl) {
        e.preventDefault();
        spaceDown.current = true;
      } else if (e.key === "Tab") {
        // keep the focus inside the dialog
        const items = [...(root.current?.querySelectorAll<HTMLElement>("button:not(:disabled), input") ?? [])];
        if (!items.length) return;
        const i = items.indexOf(document.activeElement as HTMLElement);
        const next = e.shiftKey ? (i <= 0 ? items.length - 1 : i - 1) : (i < 0 || i === items.length - 1 ? 0 : i + 1);
        e.preventDefault();
        items[next].focus();
      }
    };
    const onKeyUp = (e: KeyboardEvent) => {
      e.stopPropagation();
      if (e.key === " " && spaceDown.current) {
        e.preventDefault(); // a focused button would take Space's release as a click
        spaceDown.current = false;
      }
    };
    window.addEventListener("keydown", onKey, true);
    window.addEventListener("keyup", onKeyUp, true);
    return () => {
      window.removeEventListener("keydown", onKey, true);
      window.removeEventListener("keyup", onKeyUp, true);
    };
  }, [onClose, undo, redo, save, saving]);
  useEffect(() => root.current?.focus(), []);

  /** The image pixel under a pointer event. */
  const toImage = (e: { clientX: number; clientY: number }): [number, number] => {
    const box = viewport.current!.getBoundingClientRect();
    const v = viewRef.current;
    return [(e.clientX - box.left - v.x) / v.scale, (e.clientY - box.top - v.y) / v.scale];
  };
  const brushFor = (e: PointerEvent | ReactPointerEvent): Brush => {
    const b = brushRef.current;
    // a pen presses harder for a stronger stroke (a mouse reports 0.5 while pressed)
    return e.pointerType === "pen" && e.pressure > 0 ? { ...b, opacity: b.opacity * Math.min(1, e.pressure) } : b;
  };
  const moveCursor = (e: { clientX: number; clientY: number } | null) => {
    const el = cursor.current;
    const box = viewport.current?.getBoundingClientRect();
    if (!el || !box) return;
    if (!e) {
      el.style.display = "none";
      return;
    }
    const d = Math.max(2, brushRef.current.radius * 2 * viewRef.current.scale);
    el.style.display = "block";
    el.style.width = el.style.height = `${d}px`;
    el.style.left = `${e.clientX - box.left - d / 2}px`;
    el.style.top = `${e.clientY - box.top - d / 2}px`;
  };
  const lastPointer = useRef<{ clientX: number; clientY: number } | null>(null);
  // the circle follows a size change made with [ ] or the slider
  useEffect(() => moveCursor(lastPointer.current), [radius, view]);

  const onPointerDown = (e: ReactPointerEvent<HTMLDivElement>) => {
    if (gesture.current || saving) return;
    e.preventDefault();
    e.currentTarget.setPointerCapture(e.pointerId);
    if (e.button === 1 || e.button === 2 || spaceDown.current) {
      gesture.current = { kind: "pan", pointer: e.pointerId, x: e.clientX, y: e.clientY, start: viewRef.current };
      return;
    }
    if (e.button !== 0) return;
    const p = toImage(e);
    history.record(mask);
    setVersion((n) => n + 1);
    draw(stampDab(mask, width, height, p[0], p[1], brushFor(e)));
    gesture.current = { kind: "paint", pointer: e.pointerId, last: p };
  };
  const onPointerMove = (e: ReactPointerEvent<HTMLDivElement>) => {
    lastPointer.current = e;
    moveCursor(e);
    const g = gesture.current;
    if (!g || g.pointer !== e.pointerId) return;
    if (g.kind === "pan") {
      fitted.current = false;
      setView({ ...g.start, x: g.start.x + e.clientX - g.x, y: g.start.y + e.clientY - g.y });
      return;
    }
    const native = e.nativeEvent;
    const events = typeof native.getCoalescedEvents === "function" ? native.getCoalescedEvents() : [];
    let dirty: Rect | null = null;
    for (const ev of events.length ? events : [native]) {
      const p = toImage(ev);
      const r = strokeSegment(mask, width, height, g.last, p, brushFor(ev));
      g.last = p;
      dirty = unionRect(dirty, r);
    }
    draw(dirty);
  };
  const endGesture = (e: ReactPointerEvent<HTMLDivElement>) => {
    if (gesture.current?.pointer === e.pointerId) gesture.current = null;
  };

  const canUndo = history.canUndo;
  const canRedo = history.canRedo;
  const name = parseAnnotated(image).filename;
  return (
    <div className="sf-maskeditor" role="dialog" aria-modal="true" aria-label="Mask editor" tabIndex={-1} ref={root}
      data-size={`${width}x${height}`}>
      <div className="sf-maskeditor-bar" role="toolbar" aria-label="Mask tools">
        <span className="sf-maskeditor-title" title={image}>Mask: {name} <span className="sf-muted">{width}×{height}</span></span>
        <button type="button" aria-pressed={tool === "brush"} onClick={() => setTool("brush")} title="Paint the area to mask (B)">Brush</button>
        <button type="button" aria-pressed={tool === "eraser"} onClick={() => setTool("eraser")} title="Erase the mask (E)">Eraser</button>
        <label title="Brush size in image pixels ([ and ])">
          Size
          <input type="range" min={1} max={MAX_RADIUS} step={1} value={radius} aria-label="Brush size"
            onChange={(e) => setRadius(Number(e.target.value))} />
          <span className="sf-maskeditor-num">{radius * 2}px</span>
        </label>
        <label title="How much of the brush paints at full strength">
          Hardness
          <input type="range" min={0} max={100} step={1} value={Math.round(hardness * 100)} aria-label="Brush hardness"
            onChange={(e) => setHardness(Number(e.target.value) / 100)} />
        </label>
        <label title="The brush's strength (a pen's pressure scales it)">
          Opacity
          <input type="range" min={5} max={100} step={1} value={Math.round(opacity * 100)} aria-label="Brush opacity"
            onChange={(e) => setOpacity(Number(e.target.value) / 100)} />
        </label>
        <span className="sf-maskeditor-sep" />
        <button type="button" onClick={undo} disabled={!canUndo} title="Undo (Ctrl+Z)">Undo</button>
        <button type="button" onClick={redo} disabled={!canRedo} title="Redo (Ctrl+Shift+Z)">Redo</button>
        <button type="button" onClick={() => change(() => invertMask(mask))} title="Mask what is not masked, and the other way round">Invert</button>
        <button type="button" onClick={() => change(() => mask.fill(0))} title="Remove the whole mask">Clear</button>
        <span className="sf-maskeditor-sep" />
        <button type="button" onClick={() => zoomAt(1 / 1.25)} aria-label="Zoom out" title="Zoom out (wheel)">−</button>
        <button type="button" onClick={fit} title="Fit the image to the window">Fit</button>
        <button type="button" onClick={() => zoomAt(1.25)} aria-label="Zoom in" title="Zoom in (wheel)">+</button>
        <span className="sf-maskeditor-grow" />
        <button type="button" onClick={onClose} disabled={saving} title="Close without saving (Escape)">Cancel</button>
        <button type="button" className="sf-primary" onClick={() => void save()} disabled={saving} title="Save the mask into the node (Ctrl+S)">
          {saving ? "Saving…" : "Save"}
        </button>
      </div>
      <div
        ref={viewport}
        className={`sf-maskeditor-view${saving ? " sf-busy" : ""}`}
        data-testid="mask-canvas"
        onPointerDown={onPointerDown}
        onPointerMove={onPointerMove}
        onPointerUp={endGesture}
        onPointerCancel={endGesture}
        onPointerLeave={() => {
          lastPointer.current = null;
          moveCursor(null);
        }}
        onContextMenu={(e) => e.preventDefault()}
      >
        <div className="sf-maskeditor-stage"
          style={{ width, height, transform: `translate(${view.x}px, ${view.y}px) scale(${view.scale})` }}>
          <img src={loaded.src} alt={name} draggable={false} />
          <canvas ref={canvas} width={width} height={height} aria-label="mask" />
        </div>
        <div ref={cursor} className="sf-maskeditor-cursor" data-tool={tool} aria-hidden="true" />
      </div>
      <div className="sf-maskeditor-hint sf-muted">
        Paint where the image is to be masked · wheel: zoom · right, middle or Space + drag: pan · [ ]: brush size · Ctrl+Z: undo · Escape: cancel
      </div>
      <Toasts toasts={toasts} dismiss={dismiss} />
    </div>
  );
}
