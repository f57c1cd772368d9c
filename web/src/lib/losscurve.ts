/**
 * The geometry of a training node's loss curve (drawn by canvas/LossCurve.tsx): SVG
 * polyline points for the raw losses and an exponentially smoothed line, scaled to a
 * box, plus the numbers the labels show. Pure functions, tested without a DOM.
 */

import type { LossPoint } from "./runstore";

/** TensorBoard's default smoothing weight: each point keeps 0.6 of the running mean. */
export const SMOOTHING = 0.6;

export type CurveGeometry = {
  /** `points` attribute of the raw curve's polyline ("x,y x,y ..."). */
  raw: string;
  /** `points` of the smoothed curve (empty with fewer than 3 points: nothing to smooth). */
  smooth: string;
  min: number;
  max: number;
  last: number;
  firstStep: number;
  lastStep: number;
};

/**
 * Exponential moving average with TensorBoard's debiasing (the first values are not
 * pulled towards 0): `s_t = w s_{t-1} + (1 - w) x_t`, divided by `1 - w^t`.
 */
export function smoothed(values: number[], weight = SMOOTHING): number[] {
  const out: number[] = [];
  let mean = 0;
  let debias = 1;
  for (const v of values) {
    mean = weight * mean + (1 - weight) * v;
    debias *= weight;
    out.push(weight === 0 ? v : mean / (1 - debias));
  }
  return out;
}

function fmt(n: number): string {
  return Number(n.toFixed(1)).toString();
}

/**
 * Points scaled into `width` x `height` (y grows downwards in SVG: the largest loss at
 * the top, the smallest at the bottom), inset by `pad`. x follows the step, so a resumed
 * run's gap and a trimmed history keep their place. Null without points.
 */
export function curveGeometry(points: LossPoint[], width: number, height: number,
  pad = 2): CurveGeometry | null {
  if (!points.length) return null;
  const losses = points.map((p) => p.loss);
  const min = Math.min(...losses);
  const max = Math.max(...losses);
  const firstStep = points[0].step;
  const lastStep = points[points.length - 1].step;
  const spanX = lastStep - firstStep || 1;
  const spanY = max - min || 1;
  const x = (step: number) => pad + ((step - firstStep) / spanX) * (width - 2 * pad);
  const y = (loss: number) => pad + ((max - loss) / spanY) * (height - 2 * pad);
  // one point alone: a flat line across the box, so it is visible
  const line = (values: number[]) => points.length === 1
    ? `${fmt(pad)},${fmt(y(values[0]))} ${fmt(width - pad)},${fmt(y(values[0]))}`
    : points.map((p, i) => `${fmt(x(p.step))},${fmt(y(values[i]))}`).join(" ");
  return {
    raw: line(losses),
    smooth: points.length >= 3 ? line(smoothed(losses)) : "",
    min, max, last: losses[losses.length - 1], firstStep, lastStep,
  };
}

/** A loss for a label: 3 significant digits, exponent form for very small or large. */
export function formatLoss(loss: number): string {
  if (loss !== 0 && (Math.abs(loss) < 1e-3 || Math.abs(loss) >= 1e4)) return loss.toExponential(2);
  return Number(loss.toPrecision(3)).toString();
}
