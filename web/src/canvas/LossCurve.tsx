/**
 * A training node's live loss curve: the raw loss per step (faint) and its smoothed
 * line, over the last steps the run store keeps, with the min/max of the shown range
 * and the latest loss. Plain SVG, redrawn only when the node's record changes.
 */

import { type CSSProperties, memo, useMemo } from "react";
import { curveGeometry, formatLoss } from "../lib/losscurve";
import type { LossPoint } from "../lib/runstore";

const WIDTH = 240;
const HEIGHT = 64;
const LABEL: CSSProperties = { fontSize: 10, color: "var(--muted)", display: "flex", justifyContent: "space-between", gap: 6 };

function LossCurveImpl({ losses, resumedAt }: { losses: LossPoint[]; resumedAt?: number[] }) {
  const g = useMemo(() => curveGeometry(losses, WIDTH, HEIGHT), [losses]);
  if (!g) return null;
  return (
    <div
      className="sf-loss nodrag"
      data-points={losses.length}
      style={{ margin: "6px 8px 0", padding: "4px 6px", background: "#1f2226", borderRadius: 3 }}
    >
      <div style={LABEL}>
        <span>loss {formatLoss(g.last)}</span>
        <span data-label="max">max {formatLoss(g.max)}</span>
      </div>
      <svg
        role="img"
        aria-label={`loss curve, steps ${g.firstStep} to ${g.lastStep}`}
        viewBox={`0 0 ${WIDTH} ${HEIGHT}`}
        preserveAspectRatio="none"
        style={{ display: "block", width: "100%", height: HEIGHT }}
      >
        <polyline className="sf-loss-raw" points={g.raw} fill="none" stroke="var(--ok)"
          strokeOpacity={g.smooth ? 0.35 : 1} strokeWidth={1} vectorEffect="non-scaling-stroke" />
        {(resumedAt ?? []).filter((r) => r > g.firstStep && r <= g.lastStep).map((r) => {
          // a resumed training: a dashed mark where it went on
          const x = 2 + ((r - g.firstStep) / (g.lastStep - g.firstStep || 1)) * (WIDTH - 4);
          return <line key={r} className="sf-loss-resume" x1={x} x2={x} y1={0} y2={HEIGHT} stroke="var(--muted)"
            strokeDasharray="3 3" vectorEffect="non-scaling-stroke"><title>{`resumed at step ${r}`}</title></line>;
        })}
        {g.smooth && (
          <polyline className="sf-loss-smooth" points={g.smooth} fill="none" stroke="var(--ok)"
            strokeWidth={1.5} vectorEffect="non-scaling-stroke" />
        )}
      </svg>
      <div style={LABEL}>
        <span>step {g.firstStep === g.lastStep ? g.lastStep : `${g.firstStep}–${g.lastStep}`}
          {resumedAt?.length ? ` · resumed at ${resumedAt.join(", ")}` : ""}</span>
        <span data-label="min">min {formatLoss(g.min)}</span>
      </div>
    </div>
  );
}

export const LossCurve = memo(LossCurveImpl);
