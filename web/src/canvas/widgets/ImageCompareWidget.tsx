/**
 * ComfyUI's IMAGECOMPARE widget (Image Compare's `compare_view`): after a run, image_a and
 * image_b one over the other, A left of a slider that follows the pointer (or the arrow keys),
 * B right of it (lib/imagecompare.ts). It holds no value: nothing is saved or sent.
 */

import { useRef, useState } from "react";
import { viewUrl } from "../../api";
import { sliderPercent } from "../../lib/imagecompare";
import type { ImageRef } from "../../lib/runstore";
import { useEditor, useNodeRun } from "../context";
import type { WidgetProps } from "./types";

function Single({ img, label }: { img: ImageRef; label: string }) {
  const { openImage } = useEditor();
  return (
    <div className="sf-compare-single">
      <img className="nodrag" src={viewUrl(img)} alt={label} onClick={() => openImage(img)} />
      <span className="sf-compare-label">{label} only</span>
    </div>
  );
}

export function ImageCompareWidget({ nodeId, input }: WidgetProps) {
  const { store } = useEditor();
  const run = useNodeRun(store, nodeId);
  const [pos, setPos] = useState(50);
  const [k, setK] = useState(0);
  const frame = useRef<HTMLDivElement>(null);
  const pair = run.compare;
  if (!pair || (!pair.a.length && !pair.b.length)) {
    return <div className="sf-compare-empty">Run the graph to compare image_a with image_b here.</div>;
  }
  const count = Math.max(pair.a.length, pair.b.length);
  const i = Math.min(k, count - 1);
  const a = pair.a[Math.min(i, pair.a.length - 1)];
  const b = pair.b[Math.min(i, pair.b.length - 1)];
  const nav = count > 1 && (
    <div className="sf-compare-nav">
      <button type="button" className="nodrag sf-small" aria-label="previous pair" disabled={i === 0} onClick={() => setK(i - 1)}>‹</button>
      <span>{i + 1} / {count}</span>
      <button type="button" className="nodrag sf-small" aria-label="next pair" disabled={i >= count - 1} onClick={() => setK(i + 1)}>›</button>
    </div>
  );
  if (!a || !b) return <>{a ? <Single img={a} label="image_a" /> : <Single img={b!} label="image_b" />}{nav}</>;
  return (
    <>
      <div
        ref={frame}
        className="sf-compare nodrag nowheel"
        role="slider"
        tabIndex={0}
        aria-label={input.name}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(pos)}
        onPointerMove={(e) => {
          const r = frame.current!.getBoundingClientRect();
          setPos(sliderPercent(e.clientX, r.left, r.width));
        }}
        onKeyDown={(e) => {
          if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
            e.preventDefault();
            setPos((p) => Math.min(100, Math.max(0, p + (e.key === "ArrowLeft" ? -5 : 5))));
          }
        }}
      >
        <img className="sf-compare-b" src={viewUrl(b)} alt="image_b" draggable={false} />
        <img className="sf-compare-a" src={viewUrl(a)} alt="image_a" draggable={false}
          style={{ clipPath: `inset(0 ${100 - pos}% 0 0)` }} />
        <div className="sf-compare-line" style={{ left: `${pos}%` }} />
        <span className="sf-compare-label sf-compare-label-a">A</span>
        <span className="sf-compare-label sf-compare-label-b">B</span>
      </div>
      {nav}
    </>
  );
}
