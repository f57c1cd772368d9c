import { describe, expect, it } from "vitest";
import { FIT_MARGIN, FIT_MAX_ZOOM, fitViewport, READABLE_ZOOM, showsAll, showsAny } from "./layout";

describe("an opened graph is fitted to the view, as ComfyUI does on load", () => {
  // txt2img's seven nodes as measured (1115×416 at zoom 1) in a 2560×1440 window's pane
  const txt2img = { x: 0, y: 0, width: 1115, height: 416 };

  it("zooms a graph that fits at zoom 1 in until it fills the pane (not left at zoom 1)", () => {
    const vp = fitViewport(txt2img, 2260, 1380, 7);
    expect(vp.zoom).toBeGreaterThan(1);
    expect(vp.zoom).toBeLessThanOrEqual(FIT_MAX_ZOOM);
    // centred along both axes, the whole graph in view
    expect(vp.x + (txt2img.width * vp.zoom) / 2).toBeCloseTo(2260 / 2);
    expect(vp.y + (txt2img.height * vp.zoom) / 2).toBeCloseTo(1380 / 2);
  });

  it("fills the pane but its margins along the tighter side", () => {
    const vp = fitViewport(txt2img, 1300, 941, 7);
    expect(vp.zoom).toBeCloseTo((1300 * (1 - 2 * FIT_MARGIN)) / 1115);
    expect(vp.x).toBeCloseTo(1300 * FIT_MARGIN);
    // a small pane: margins of at least 40 px
    expect(fitViewport(txt2img, 400, 300, 7).zoom).toBe(READABLE_ZOOM);
  });

  it("still keeps a graph that does not fit readable (top-left part at READABLE_ZOOM)", () => {
    const vp = fitViewport({ x: 0, y: 0, width: 2400, height: 1400 }, 1300, 941, 16);
    expect(vp.zoom).toBe(READABLE_ZOOM);
  });
});

describe("showsAny", () => {
  const rects = [{ x: 0, y: 0, width: 260, height: 200 }, { x: 400, y: 0, width: 260, height: 200 }];

  it("tells a view showing part of the graph from one looking at empty canvas", () => {
    expect(showsAny({ x: 0, y: 0, zoom: 1 }, rects, 800, 600)).toBe(true);
    expect(showsAny({ x: -600, y: 0, zoom: 1 }, rects, 800, 600)).toBe(true); // the second node's right edge
    expect(showsAny({ x: -5000, y: -5000, zoom: 1 }, rects, 800, 600)).toBe(false);
    expect(showsAny({ x: 900, y: 0, zoom: 2 }, rects, 800, 600)).toBe(false);
  });
});

describe("showsAll (the first view of the default graph)", () => {
  const rects = [{ x: 0, y: 0, width: 260, height: 200 }, { x: 900, y: 0, width: 260, height: 200 }];

  it("is false when a node is cut off by the pane's edge (the side panel), where showsAny is true", () => {
    // an 800x600 window: a 560 px wide canvas beside the side panel, the readable fit's top-left view
    const vp = { x: 40, y: 100, zoom: 0.8 };
    expect(showsAny(vp, rects, 560, 541)).toBe(true);
    expect(showsAll(vp, rects, 560, 541)).toBe(false);
  });

  it("is true for a view that has every node whole, as a fit of the whole graph", () => {
    expect(showsAll({ x: 20, y: 20, zoom: 0.45 }, rects, 560, 541)).toBe(true);
    expect(showsAll({ x: 0, y: 0, zoom: 1 }, rects.slice(0, 1), 260, 200)).toBe(true); // edges touching
  });

  it("the readable fit of a graph too wide for a small canvas shows only part of it", () => {
    const wide = { x: 0, y: 0, width: 1160, height: 700 };
    const vp = fitViewport(wide, 560, 541, 7);
    expect(vp.zoom).toBe(READABLE_ZOOM);
    expect(showsAll(vp, [wide], 560, 541)).toBe(false);
  });
});
