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

function LossCurveImpl({ losses }: { losses: LossPoint[] }) {
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
        {g.smooth && (
          <polyline className="sf-loss-smooth" points={g.smooth} fill="none" stroke="var(--ok)"
            strokeWidth={1.5} vectorEffect="non-scaling-stroke" />
        )}
      </svg>
      <div style={LABEL}>
        <span>step {g.firstStep === g.lastStep ? g.lastStep : `${g.firstStep}–${g.lastStep}`}</span>
        <span data-label="min">min {formatLoss(g.min)}</span>
      </div>
    </div>
  );
}

export const LossCurve = memo(LossCurveImpl);
