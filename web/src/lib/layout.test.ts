import { describe, expect, it } from "vitest";
import {
  boundsOf, dotGridCell, VIEW_MARGIN, estimateNodeHeight, FIT_MAX_ZOOM, fitViewport, freeSpot, keepsReadableView, LOD_NODES, lowDetail, revealShift,
  MIN_DOT_CELL, overlaps, pasteOffset, READABLE_ZOOM, resultRoom,
} from "./layout";
import { parseNodeSchema } from "./schema";
import { testDefs } from "./testdefs";

describe("fitViewport", () => {
  it("fits a small graph whole, zoomed in to fill the view up to FIT_MAX_ZOOM", () => {
    const vp = fitViewport({ x: 0, y: 0, width: 400, height: 300 }, 1200, 800, 3);
    expect(vp.zoom).toBe(FIT_MAX_ZOOM);
    expect(vp.x).toBe(300); // centred
    expect(vp.y).toBe(175);
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

describe("keepsReadableView", () => {
  const graph = { x: 0, y: 0, width: 1000, height: 600 };
  it("keeps a saved view that is readable and shows the whole graph", () => {
    expect(keepsReadableView({ x: 40, y: 40, zoom: 0.9 }, graph, 1200, 800, 12)).toBe(true);
    expect(keepsReadableView({ x: 10, y: 10, zoom: 1.1 }, graph, 1200, 800, 12)).toBe(true); // zoomed in a little
  });

  it("refuses one zoomed out below the readable zoom, or showing only part of the graph", () => {
    // image2image.json's saved view: zoom 0.43
    expect(keepsReadableView({ x: 300, y: 200, zoom: 0.43 }, graph, 1200, 800, 12)).toBe(false);
    expect(keepsReadableView({ x: 5000, y: 0, zoom: 1 }, graph, 1200, 800, 12)).toBe(false); // looking away
    expect(keepsReadableView({ x: -400, y: -300, zoom: 1.35 }, graph, 1200, 800, 12)).toBe(false); // one corner
    // a large graph may be shown further out
    expect(keepsReadableView({ x: 20, y: 20, zoom: 0.5 }, { ...graph, width: 2000, height: 1400 }, 1200, 800, 100)).toBe(true);
    expect(keepsReadableView({ x: 20, y: 20, zoom: 0.5 }, { ...graph, width: 2000, height: 1400 }, 1200, 800, 30)).toBe(false);
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

describe("freeSpot", () => {
  const size = { width: 260, height: 120 };
  const view = { x: 0, y: 0, width: 1200, height: 800 };

  it("keeps the wanted spot when it is free, else the nearest free one in view", () => {
    expect(freeSpot([], { x: 470, y: 340 }, size, view)).toEqual({ x: 470, y: 340 });
    const taken = [{ x: 400, y: 300, width: 300, height: 200 }, { x: 100, y: 100, width: 260, height: 500 }];
    const spot = freeSpot(taken, { x: 470, y: 340 }, size, view);
    const rects = new Map([["new", { ...spot, ...size }], ...taken.map((r, i) => [`n${i}`, r] as const)]);
    expect(overlaps(rects)).toEqual([]);
    expect(spot.x >= 0 && spot.y >= 0 && spot.x + size.width <= 1200 && spot.y + size.height <= 800).toBe(true);
    expect(Math.hypot(spot.x - 470, spot.y - 340)).toBeLessThan(300);
  });

  it("keeps a node wanted at the view's edge off it, so its sockets stay on the canvas (not under the side panel)", () => {
    // the drill: a node wanted with its right side past the view's right edge (the side panel)
    const spot = freeSpot([], { x: 1000, y: 100 }, size, view);
    expect(spot.x + size.width).toBeLessThanOrEqual(1200 - VIEW_MARGIN);
    expect(spot.x).toBeGreaterThan(900);
    const top = freeSpot([], { x: 300, y: -10 }, size, view);
    expect(top.y).toBeGreaterThanOrEqual(VIEW_MARGIN);
  });

  it("goes outside the view only when the view is full", () => {
    const full = [{ x: -50, y: -50, width: 1300, height: 900 }];
    const spot = freeSpot(full, { x: 470, y: 340 }, size, view);
    expect(overlaps(new Map([["a", { ...spot, ...size }], ["b", full[0]]]))).toEqual([]);
  });
});

describe("revealShift", () => {
  const view = { x: 0, y: 0, width: 1200, height: 800 };
  const m = VIEW_MARGIN;

  it("moves the view only as far as a node placed outside it needs to be seen whole", () => {
    expect(revealShift({ x: 100, y: 100, width: 260, height: 120 }, view)).toEqual({ x: 0, y: 0 });
    // the drill: under the side panel on the right, under the toolbar at the top
    expect(revealShift({ x: 1100, y: 100, width: 260, height: 120 }, view)).toEqual({ x: 160 + m, y: 0 });
    expect(revealShift({ x: 100, y: -30, width: 260, height: 120 }, view)).toEqual({ x: 0, y: -30 - m });
  });

  it("shows the top-left of a node taller than the view", () => {
    expect(revealShift({ x: 100, y: 50, width: 260, height: 2000 }, view)).toEqual({ x: 0, y: 50 - m });
  });
});

describe("dotGridCell", () => {
  it("thins the dots zoomed out so they never blur into a moiré", () => {
    expect(dotGridCell(24, 1)).toEqual({ cell: 24, thinned: 0 });
    expect(dotGridCell(24, 0.5)).toEqual({ cell: 12, thinned: 0 });
    const far = dotGridCell(24, 0.1); // 2.4 px apart unthinned
    expect(far.cell).toBeGreaterThanOrEqual(MIN_DOT_CELL);
    expect(far.cell).toBeCloseTo(19.2);
    expect(far.thinned).toBe(3);
  });
});

describe("estimateNodeHeight (a new node's size before it is measured)", () => {
  it("counts a multiline text widget as the textarea it is", () => {
    // Regex Match: two multiline texts, three booleans, one output; 318 px when measured in Chromium
    const regex = parseNodeSchema("RegexMatch", {
      display_name: "Regex Match", category: "utils/string",
      input: { required: {
        string: ["STRING", { default: "", multiline: true }], regex_pattern: ["STRING", { default: "", multiline: true }],
        case_insensitive: ["BOOLEAN", { default: true }], multiline: ["BOOLEAN", { default: false }],
        dotall: ["BOOLEAN", { default: false }],
      } },
      output: ["BOOLEAN"], output_name: ["matches"],
    });
    expect(estimateNodeHeight(regex)).toBeGreaterThanOrEqual(310);
    expect(estimateNodeHeight(regex)).toBeLessThanOrEqual(330);
    const oneLine = parseNodeSchema("OneLine", {
      display_name: "One Line", category: "test",
      input: { required: { text: ["STRING", { default: "" }] } }, output: ["STRING"],
    });
    expect(estimateNodeHeight(oneLine)).toBeLessThan(estimateNodeHeight(parseNodeSchema("Multi", {
      display_name: "Multi", category: "test",
      input: { required: { text: ["STRING", { default: "", multiline: true }] } }, output: ["STRING"],
    })));
  });

  it("makes room for a Load Image node's preview, and guesses an unknown node", () => {
    const defs = testDefs();
    expect(estimateNodeHeight(defs.get("LoadImage"))).toBeGreaterThan(200);
    expect(estimateNodeHeight(defs.get("VAEDecode"))).toBe(36 + 18 * 3);
    expect(estimateNodeHeight(undefined)).toBe(80);
  });
});

describe("pasteOffset (pasted and cloned nodes)", () => {
  const taken = [{ x: 0, y: 0, width: 260, height: 200 }, { x: 400, y: 0, width: 260, height: 300 }];

  it("keeps the pointer's spot when it is free", () => {
    const clip = [{ x: 0, y: 0, width: 260, height: 200 }];
    expect(pasteOffset(clip, taken, { x: 0, y: 600 })).toEqual({ x: 0, y: 600 });
  });

  it("moves a clone (at +30,+30 of its node) off its node and its neighbours, to the nearest free space", () => {
    const clip = [taken[0]];
    const d = pasteOffset(clip, taken, { x: 30, y: 30 });
    const placed = { ...taken[0], x: taken[0].x + d.x, y: taken[0].y + d.y };
    for (const t of taken) {
      const overlap = placed.x < t.x + t.width && t.x < placed.x + placed.width && placed.y < t.y + t.height && t.y < placed.y + placed.height;
      expect(overlap).toBe(false);
    }
    // the nearest: within a few steps of where it was asked for
    expect(Math.hypot(placed.x - 30, placed.y - 30)).toBeLessThan(320);
  });

  it("moves several pasted nodes as one block, keeping their arrangement", () => {
    const clip = [{ x: 100, y: 100, width: 260, height: 200 }, { x: 400, y: 150, width: 260, height: 100 }];
    const d = pasteOffset(clip, taken, { x: 10, y: 10 });
    const moved = clip.map((r) => ({ ...r, x: r.x + d.x, y: r.y + d.y }));
    expect(moved[1].x - moved[0].x).toBe(300);
    expect(moved[1].y - moved[0].y).toBe(50);
    for (const m of moved) {
      for (const t of taken) {
        expect(m.x < t.x + t.width && t.x < m.x + m.width && m.y < t.y + t.height && t.y < m.y + m.height).toBe(false);
      }
    }
  });
});

describe("resultRoom", () => {
  const defs = testDefs();
  const none = { preview: false, images: false };
  it("keeps a square of the node's width for a sampler's coming preview, until it has one", () => {
    expect(resultRoom(defs.get("KSampler"), 260, none)).toBe(250);
    expect(resultRoom(defs.get("KSampler"), 260, { preview: true, images: false })).toBe(0);
  });
  it("keeps room for an output node's images, until it shows them", () => {
    expect(resultRoom(defs.get("SaveImage"), 260, none)).toBe(250);
    expect(resultRoom(defs.get("SaveImage"), 260, { preview: false, images: true })).toBe(0);
  });
  it("keeps none for nodes that do not grow when they run", () => {
    expect(resultRoom(defs.get("VAEDecode"), 260, none)).toBe(0);
    expect(resultRoom(defs.get("CheckpointLoaderSimple"), 260, none)).toBe(0);
    expect(resultRoom(undefined, 260, none)).toBe(0);
  });
});
