/**
 * ComfyUI's BOUNDING_BOX widget (Crop Image's `crop_region`): four whole-number fields for the
 * `{x, y, width, height}` value and, when the node's image input comes from a node whose image
 * the canvas can show (a Load Image, or a node that showed images after a run), that image
 * with the box drawn over it: drag inside the box to move it, a corner to resize it, elsewhere
 * to draw a new one (lib/boundingbox.ts). A drag is one undo step.
 *
 * A box that covers the whole image (ComfyUI's default 512×512 over a smaller image) leaves no
 * image outside it to start a new box on, and moving it does nothing: a drag inside it draws a
 * new box (the cursor is a crosshair there and the hint under the image says so). Alt-drag
 * draws one inside any box (not Shift: it is React Flow's selection key, and a Shift-drag never
 * reaches the node). A box reaching past the image is drawn as the part inside it (the crop
 * the server makes), its cut sides dashed, with a note of its stored size.
 */

import { useNodeConnections, useNodesData } from "@xyflow/react";
import { type PointerEvent as ReactPointerEvent, useEffect, useRef, useState } from "react";
import { viewUrl } from "../../api";
import {
  BOX_FIELDS, BOX_MAX, type Box, type BoxField, boxFieldIssue, boxFields, boxFromPoints, boxMin, boxOverflow, boxPercent,
  CORNERS, type Corner, coversImage, croppedSize, moveBox, numericBox, pressMode, resizeBox, withField,
} from "../../lib/boundingbox";
import { parseAnnotated } from "../../lib/feedback";
import { parseNumberText } from "../../lib/widgetcheck";
import { useEditor, useNodeRun } from "../context";
import { inHandle, type SfNode } from "../flow";
import type { WidgetProps } from "./types";

function BoxFieldInput({ label, field, value, onCommit }: {
  label: string; field: BoxField; value: number | string; onCommit(v: number | string): void;
}) {
  const [text, setText] = useState(String(value));
  const focused = useRef(false);
  useEffect(() => {
    if (!focused.current) setText(String(value));
  }, [value]);
  const commit = (s: string) => {
    const n = parseNumberText(s);
    const v = n === null ? s : n; // kept as typed: a bad value is marked, and the server says why
    if (v !== value) onCommit(v);
  };
  const issue = boxFieldIssue(field, value);
  return (
    <label className={`sf-bbox-field${issue ? " sf-invalid" : ""}`} title={issue ?? `${field}: ${boxMin(field)} to ${BOX_MAX} px`}>
      <span>{field}</span>
      <input
        type="text"
        inputMode="numeric"
        className="nodrag"
        aria-label={label}
        aria-invalid={issue ? true : undefined}
        value={text}
        onFocus={() => (focused.current = true)}
        onChange={(e) => {
          setText(e.target.value);
          commit(e.target.value);
        }}
        onBlur={(e) => {
          focused.current = false;
          commit(e.target.value);
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter") (e.target as HTMLInputElement).blur();
          if ((e.key === "ArrowUp" || e.key === "ArrowDown") && typeof value === "number") {
            e.preventDefault();
            const step = (e.key === "ArrowUp" ? 1 : -1) * (e.shiftKey ? 10 : 1);
            const v = Math.min(BOX_MAX, Math.max(boxMin(field), Math.round(value) + step));
            setText(String(v));
            onCommit(v);
          }
        }}
      />
    </label>
  );
}

/** The image feeding the node's first IMAGE input, when the canvas can show it. */
function useSourceImage(nodeId: string): string | null {
  const { defs, store } = useEditor();
  const self = useNodesData<SfNode>(nodeId);
  const imageInput = defs.get(self?.data.type ?? "")?.inputs.find((i) => i.type === "IMAGE")?.name ?? "image";
  const conns = useNodeConnections({ handleType: "target", handleId: inHandle(imageInput) });
  const sourceId = conns[0]?.source ?? "";
  const source = useNodesData<SfNode>(sourceId);
  const run = useNodeRun(store, sourceId);
  if (!source) return null;
  const upload = defs.get(source.data.type)?.inputs.find((i) => i.widget && i.options.upload === "image");
  const picked = upload ? source.data.values[upload.name] : undefined;
  if (typeof picked === "string" && picked) return viewUrl(parseAnnotated(picked));
  const shown = run.images?.[0];
  return shown ? viewUrl(shown) : null;
}

/** The tallest the input image is drawn (px at zoom 1). */
const CROP_HEIGHT = 240;

type Drag = { pointer: number; mode: "move" | "draw" | Corner; x: number; y: number; start: Box; moved: boolean };

function CropOverlay({ src, box, onChange, onHold }: {
  src: string; box: Box; onChange(b: Box): void; onHold(on: boolean): void;
}) {
  const [size, setSize] = useState<{ w: number; h: number } | null>(null);
  const frame = useRef<HTMLDivElement>(null);
  const drag = useRef<Drag | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    setFailed(false);
  }, [src]);
  // client pixels → image pixels (the frame is the image's box, React Flow's zoom included)
  const toImage = (clientX: number, clientY: number) => {
    const r = frame.current!.getBoundingClientRect();
    return { x: ((clientX - r.left) / r.width) * size!.w, y: ((clientY - r.top) / r.height) * size!.h };
  };
  const begin = (e: ReactPointerEvent, mode: Drag["mode"]) => {
    if (!size || e.button !== 0 || drag.current) return;
    e.stopPropagation();
    e.preventDefault();
    const p = toImage(e.clientX, e.clientY);
    drag.current = { pointer: e.pointerId, mode, x: p.x, y: p.y, start: box, moved: false };
    frame.current!.setPointerCapture(e.pointerId);
  };
  const boxAt = (e: ReactPointerEvent): Box | null => {
    const d = drag.current;
    if (!d || d.pointer !== e.pointerId || !size) return null;
    const p = toImage(e.clientX, e.clientY);
    if (!d.moved && Math.hypot(p.x - d.x, p.y - d.y) < 1) return null;
    if (!d.moved) {
      d.moved = true;
      onHold(true); // the whole drag is one undo step
    }
    if (d.mode === "move") return moveBox(d.start, Math.round(p.x - d.x), Math.round(p.y - d.y), size.w, size.h);
    if (d.mode === "draw") return boxFromPoints(d.x, d.y, p.x, p.y, size.w, size.h);
    return resizeBox(d.start, d.mode, p.x - d.x, p.y - d.y, size.w, size.h);
  };
  const end = (e: ReactPointerEvent) => {
    const d = drag.current;
    if (!d || d.pointer !== e.pointerId) return;
    const b = boxAt(e);
    drag.current = null;
    if (d.moved) {
      onHold(false);
      onChange(b ?? box); // one more edit after the hold: it records the drag as one undo step
    }
  };
  if (failed) return <div className="sf-crop-missing">The input image cannot be shown; set the box with the fields.</div>;
  const pct = size ? boxPercent(box, size.w, size.h) : null;
  const out = size ? croppedSize(box, size.w, size.h) : null;
  const full = size ? coversImage(box, size.w, size.h) : false;
  const past = size ? boxOverflow(box, size.w, size.h) : null;
  const cut = past ? [past.right && "sf-crop-cut-right", past.bottom && "sf-crop-cut-bottom"].filter(Boolean).join(" ") : "";
  return (
    <div className="sf-crop nodrag nowheel">
      <div
        ref={frame}
        className="sf-crop-frame"
        data-testid="crop-frame"
        // as wide as the node allows, at most CROP_HEIGHT high, in the image's proportions
        style={size ? { width: `min(100%, ${(CROP_HEIGHT * size.w) / size.h}px)`, aspectRatio: `${size.w} / ${size.h}` } : undefined}
        onPointerDown={(e) => begin(e, "draw")}
        onPointerMove={(e) => {
          const b = boxAt(e);
          if (b) onChange(b);
        }}
        onPointerUp={end}
        onPointerCancel={(e) => {
          if (drag.current?.moved) onHold(false);
          if (drag.current?.pointer === e.pointerId) drag.current = null;
        }}
      >
        <img
          src={src}
          alt="crop input"
          draggable={false}
          onLoad={(e) => setSize({ w: e.currentTarget.naturalWidth, h: e.currentTarget.naturalHeight })}
          onError={() => setFailed(true)}
        />
        {pct && (
          <div
            className={`sf-crop-box${full ? " sf-crop-full" : ""}${cut ? ` ${cut}` : ""}`}
            data-testid="crop-box"
            style={{ left: `${pct.left}%`, top: `${pct.top}%`, width: `${pct.width}%`, height: `${pct.height}%` }}
            onPointerDown={(e) => size && begin(e, pressMode(box, size.w, size.h, e.altKey))}
          >
            {CORNERS.map((c) => (
              <span key={c} className={`sf-crop-handle sf-crop-${c}`} data-corner={c} onPointerDown={(e) => begin(e, c)} />
            ))}
          </div>
        )}
      </div>
      {size && out && (
        <div className="sf-crop-info" data-testid="crop-info">
          crop {out.width}×{out.height} of {size.w}×{size.h}
        </div>
      )}
      {size && past && (past.right || past.bottom || past.outside) && (
        <div className="sf-crop-info sf-crop-note" data-testid="crop-note">
          {box.width}×{box.height} box cut at the image's edge
        </div>
      )}
      {size && (
        <div className="sf-crop-info sf-crop-hint" data-testid="crop-hint">
          {full ? "drag on the image to draw a new box" : "Alt-drag or drag outside: a new box"}
        </div>
      )}
    </div>
  );
}

export function BoundingBoxWidget({ nodeId, input, value }: WidgetProps) {
  const { setValue, holdHistory } = useEditor();
  const fields = boxFields(value);
  const src = useSourceImage(nodeId);
  return (
    <div className="sf-widget-bbox">
      {src && (
        <CropOverlay src={src} box={numericBox(value)} onHold={holdHistory}
          onChange={(b) => setValue(nodeId, input.name, b)} />
      )}
      <div className="sf-bbox-fields">
        {BOX_FIELDS.map((f) => (
          <BoxFieldInput key={f} label={`${input.name} ${f}`} field={f} value={fields[f]}
            onCommit={(v) => setValue(nodeId, input.name, withField(value, f, v))} />
        ))}
      </div>
    </div>
  );
}
