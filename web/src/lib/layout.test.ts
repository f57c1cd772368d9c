import { describe, expect, it } from "vitest";
import { boundsOf, fitViewport, LOD_NODES, lowDetail, overlaps, READABLE_ZOOM } from "./layout";

describe("fitViewport", () => {
  it("fits a small graph whole, never above zoom 1", () => {
    const vp = fitViewport({ x: 0, y: 0, width: 400, height: 300 }, 1200, 800, 3);
    expect(vp.zoom).toBe(1);
    expect(vp.x).toBe(400); // centred
    expect(vp.y).toBe(250);
  });

  it("keeps a 12-node graph readable and shows its top-left part when it does not fit", () => {
    const vp = fitViewport({ x: 100, y: 50, width: 2200, height: 700 }, 1140, 850, 12);
    expect(vp.zoom).toBe(READABLE_ZOOM);
    expect(vp.x).toBe(40 - 100 * READABLE_ZOOM); // left edge at the padding
    expect(vp.y).toBeCloseTo((850 - 700 * READABLE_ZOOM) / 2 - 50 * READABLE_ZOOM); // height fits: centred
  });

  it("lets only a large graph go below the readable zoom", () => {
    expect(fitViewport({ x: 0, y: 0, width: 8000, height: 4000 }, 1000, 800, 300).zoom).toBeLessThan(READABLE_ZOOM);
  });
});

describe("lowDetail", () => {
  it("applies only to a large graph zoomed out", () => {
    expect(lowDetail(0.3, 16)).toBe(false);
    expect(lowDetail(0.3, LOD_NODES)).toBe(true);
    expect(lowDetail(0.8, 1000)).toBe(false);
  });
});

describe("boundsOf and overlaps", () => {
  it("finds the box around rectangles and the pairs that overlap", () => {
    const a = { x: 0, y: 0, width: 100, height: 100 };
    const b = { x: 50, y: 50, width: 100, height: 100 };
    const c = { x: 200, y: 0, width: 10, height: 10 };
    expect(boundsOf([a, b, c])).toEqual({ x: 0, y: 0, width: 210, height: 150 });
    expect(overlaps(new Map([["a", a], ["b", b], ["c", c]]))).toEqual([["a", "b"]]);
    expect(boundsOf([])).toEqual({ x: 0, y: 0, width: 0, height: 0 });
  });
});
