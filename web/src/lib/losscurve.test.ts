import { describe, expect, it } from "vitest";
import { curveGeometry, formatLoss, smoothed } from "./losscurve";

const pts = (losses: number[], first = 1) => losses.map((loss, i) => ({ step: first + i, loss }));

describe("loss curve geometry", () => {
  it("scales the steps across and the losses down the box", () => {
    const g = curveGeometry(pts([1, 0.5, 0]), 102, 52, 1)!;
    // step 1 at the left, highest loss at the top; step 3 at the right, lowest at the bottom
    expect(g.raw).toBe("1,1 51,26 101,51");
    expect(g).toMatchObject({ min: 0, max: 1, last: 0, firstStep: 1, lastStep: 3 });
    expect(g.smooth.split(" ")).toHaveLength(3);
  });

  it("places points by step (a trimmed or resumed curve keeps its x)", () => {
    const g = curveGeometry([{ step: 10, loss: 2 }, { step: 11, loss: 1 }, { step: 20, loss: 1 }], 100, 10, 0)!;
    expect(g.raw).toBe("0,0 10,10 100,10");
  });

  it("draws a single point or a flat curve as a visible line", () => {
    expect(curveGeometry(pts([0.3]), 100, 20, 2)!.raw).toBe("2,2 98,2");
    const flat = curveGeometry(pts([0.3, 0.3]), 100, 20, 2)!;
    expect(flat.raw).toBe("2,2 98,2");
    expect(flat.smooth).toBe(""); // too few points to smooth
    expect(curveGeometry([], 100, 20)).toBeNull();
  });

  it("smooths with a debiased moving average", () => {
    expect(smoothed([1, 1, 1])).toEqual([1, 1, 1].map((v) => expect.closeTo(v, 12)));
    const s = smoothed([0, 1], 0.5);
    expect(s[0]).toBe(0);
    expect(s[1]).toBeCloseTo((0.5 * 0 * 0.5 + 0.5 * 1) / (1 - 0.25), 12);
    expect(smoothed([3, 4], 0)).toEqual([3, 4]);
  });

  it("formats labels", () => {
    expect(formatLoss(0.123456)).toBe("0.123");
    expect(formatLoss(12.345)).toBe("12.3");
    expect(formatLoss(0.00012)).toBe("1.20e-4");
    expect(formatLoss(0)).toBe("0");
  });
});
