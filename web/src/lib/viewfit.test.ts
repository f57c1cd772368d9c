import { afterEach, describe, expect, it, vi } from "vitest";
import { debounce, FitTracker, resized, sameViewport } from "./viewfit";

describe("FitTracker", () => {
  it("refits only while the view is where the last fit left it", () => {
    const t = new FitTracker<string>();
    expect(t.refit({ x: 0, y: 0, zoom: 1 })).toBeNull(); // never fitted
    t.fitted({ x: 100, y: 50, zoom: 0.8 }, "readable");
    expect(t.refit({ x: 100, y: 50, zoom: 0.8 })).toBe("readable");
    expect(t.refit({ x: 100.2, y: 49.9, zoom: 0.8 })).toBe("readable"); // rounding
    expect(t.refit({ x: 140, y: 50, zoom: 0.8 })).toBeNull(); // panned
    expect(t.refit({ x: 100, y: 50, zoom: 0.9 })).toBeNull(); // zoomed
  });

  it("forgets a fit when a view is set another way, and a new fit replaces the old", () => {
    const t = new FitTracker<string>();
    t.fitted({ x: 1, y: 2, zoom: 1 }, "readable");
    t.forget();
    expect(t.refit({ x: 1, y: 2, zoom: 1 })).toBeNull();
    t.fitted({ x: 5, y: 5, zoom: 2 }, "all");
    expect(t.refit({ x: 5, y: 5, zoom: 2 })).toBe("all");
  });

  it("keeps its own copy of the viewport", () => {
    const t = new FitTracker<number>();
    const vp = { x: 10, y: 10, zoom: 1 };
    t.fitted(vp, 1);
    vp.x = 300;
    expect(t.refit({ x: 10, y: 10, zoom: 1 })).toBe(1);
  });
});

describe("sameViewport", () => {
  it("tolerates rounding only", () => {
    expect(sameViewport({ x: 0, y: 0, zoom: 1 }, { x: 0.4, y: -0.4, zoom: 1 })).toBe(true);
    expect(sameViewport({ x: 0, y: 0, zoom: 1 }, { x: 2, y: 0, zoom: 1 })).toBe(false);
    expect(sameViewport({ x: 0, y: 0, zoom: 1 }, { x: 0, y: 0, zoom: 1.01 })).toBe(false);
  });
});

describe("resized", () => {
  it("ignores the first report, sub-pixel changes and a hidden canvas", () => {
    expect(resized(null, { width: 800, height: 600 })).toBe(false);
    expect(resized({ width: 800, height: 600 }, { width: 800.4, height: 600 })).toBe(false);
    expect(resized({ width: 800, height: 600 }, { width: 0, height: 0 })).toBe(false);
    expect(resized({ width: 800, height: 600 }, { width: 1024, height: 600 })).toBe(true);
    expect(resized({ width: 800, height: 600 }, { width: 800, height: 500 })).toBe(true);
  });
});

describe("debounce", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("runs once, after the last call of a burst", () => {
    vi.useFakeTimers();
    const fn = vi.fn();
    const d = debounce(fn, 150);
    d();
    vi.advanceTimersByTime(100);
    d();
    vi.advanceTimersByTime(100);
    d();
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(149);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(fn).toHaveBeenCalledTimes(1);
    d();
    vi.advanceTimersByTime(150);
    expect(fn).toHaveBeenCalledTimes(2);
  });

  it("can be cancelled (the canvas unmounts)", () => {
    vi.useFakeTimers();
    const fn = vi.fn();
    const d = debounce(fn, 150);
    d();
    d.cancel();
    vi.advanceTimersByTime(1000);
    expect(fn).not.toHaveBeenCalled();
  });
});
