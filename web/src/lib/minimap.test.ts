import { describe, expect, it } from "vitest";
import { keepOnGraph, minimapPan, minimapScale } from "./minimap";

const pane = { width: 1000, height: 800 };
const graph = { x: 0, y: 0, width: 2000, height: 1200 };

describe("minimapPan", () => {
  it("moves the view with the pointer at the minimap's scale", () => {
    const start = { x: 100, y: 50, zoom: 1 };
    // 10 flow units per minimap pixel: 20 px right shows what lies 200 units further right
    expect(minimapPan(start, 20, -5, 10, pane, graph)).toEqual({ x: -100, y: 100, zoom: 1 });
    // zoomed in, the same drag moves the same part of the graph: twice the screen pixels
    expect(minimapPan({ x: 100, y: 50, zoom: 2 }, 20, 0, 10, pane, graph).x).toBe(100 - 400);
  });

  it("never takes the view off the graph, however far the drag goes", () => {
    const start = { x: 0, y: 0, zoom: 1 };
    for (const [dx, dy] of [[-300, -300], [300, 0], [5000, 5000], [0, -1e6]]) {
      const vp = minimapPan(start, dx, dy, 16, pane, graph);
      const cx = (pane.width / 2 - vp.x) / vp.zoom;
      const cy = (pane.height / 2 - vp.y) / vp.zoom;
      expect(cx).toBeGreaterThanOrEqual(graph.x);
      expect(cx).toBeLessThanOrEqual(graph.x + graph.width);
      expect(cy).toBeGreaterThanOrEqual(graph.y);
      expect(cy).toBeLessThanOrEqual(graph.y + graph.height);
    }
    // dragged up-left as far as it goes: the view's centre on the graph's top-left corner
    expect(minimapPan(start, -300, -300, 16, pane, graph)).toEqual({ x: 500, y: 400, zoom: 1 });
  });

  it("pans freely on an empty canvas", () => {
    expect(minimapPan({ x: 0, y: 0, zoom: 1 }, 10, 10, 5, pane)).toEqual({ x: -50, y: -50, zoom: 1 });
  });
});

describe("keepOnGraph and minimapScale", () => {
  it("leaves a view over the graph alone and brings one beside it back", () => {
    const over = { x: -300, y: -200, zoom: 0.8 };
    expect(keepOnGraph(over, pane, graph)).toBe(over);
    const away = keepOnGraph({ x: 5000, y: 0, zoom: 1 }, pane, graph);
    expect(away).toEqual({ x: 500, y: 0, zoom: 1 }); // its centre moved onto the graph's left edge
  });

  it("reads flow units per pixel from the minimap's viewBox", () => {
    expect(minimapScale({ width: 2000, height: 1500 }, 200, 150)).toBe(10);
    expect(minimapScale({ width: 2000, height: 3000 }, 200, 150)).toBe(20); // the taller side decides
    expect(minimapScale({ width: 10, height: 10 }, 0, 0)).toBe(0);
  });
});
