import { describe, expect, it } from "vitest";
import {
  brushFalloff, dabPoints, defaultRadius, fitScale, invertMask, isEmptyMask, MAX_SIDE, MaskHistory, maskFileName,
  maskFromAlpha, maskFromAlphaView, maskToAlpha, overlayPixels, savedImageValue, sizeIssue, stampDab, strokeSegment,
  unionRect,
} from "./maskeditor";

const hard = { radius: 2, hardness: 1, opacity: 1, erase: false };

describe("mask <-> alpha", () => {
  it("reads ComfyUI's convention: transparent is masked", () => {
    const rgba = [9, 9, 9, 255, 9, 9, 9, 0, 9, 9, 9, 128];
    expect([...maskFromAlpha(rgba, 3, 1)]).toEqual([0, 255, 127]);
  });

  it("reads the grey alpha view (/view?channel=a)", () => {
    const rgba = [255, 255, 255, 255, 0, 0, 0, 255, 200, 200, 200, 255];
    expect([...maskFromAlphaView(rgba, 3, 1)]).toEqual([0, 255, 55]);
  });

  it("writes the mask as alpha and reads it back unchanged", () => {
    const mask = new Uint8Array([0, 255, 17, 200]);
    const rgba = maskToAlpha(mask);
    expect([...rgba]).toEqual([0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 238, 0, 0, 0, 55]);
    expect([...maskFromAlpha(rgba, 2, 2)]).toEqual([...mask]);
  });

  it("inverts and tells an empty mask", () => {
    const mask = new Uint8Array([0, 255, 10]);
    invertMask(mask);
    expect([...mask]).toEqual([255, 0, 245]);
    expect(isEmptyMask(mask)).toBe(false);
    expect(isEmptyMask(new Uint8Array(4))).toBe(true);
  });
});

describe("sizes", () => {
  it("refuses images beyond the limit with a clear message", () => {
    expect(sizeIssue(1024, 256)).toBeNull();
    expect(sizeIssue(40, 64)).toBeNull();
    expect(sizeIssue(MAX_SIDE, MAX_SIDE)).toBeNull();
    expect(sizeIssue(MAX_SIDE + 1, 10)).toMatch(/4097×10 pixels.*at most 4096/);
    expect(sizeIssue(0, 10)).toMatch(/no pixels/);
  });

  it("fits any image into the window, small ones grown up to 16x", () => {
    expect(fitScale(1024, 256, 800, 600)).toBeCloseTo(800 / 1024);
    expect(fitScale(40, 64, 1600, 900)).toBeCloseTo(900 / 64);
    expect(fitScale(4, 4, 1600, 900)).toBe(16);
    expect(fitScale(0, 4, 100, 100)).toBe(1);
  });

  it("picks a brush size for the image", () => {
    expect(defaultRadius(40, 64)).toBe(2);
    expect(defaultRadius(1024, 256)).toBe(34);
    expect(defaultRadius(4096, 4096)).toBe(100);
  });
});

describe("brush", () => {
  it("is full inside the hard part and fades to nothing at the rim", () => {
    expect(brushFalloff(0, 0.5)).toBe(1);
    expect(brushFalloff(0.5, 0.5)).toBe(1);
    expect(brushFalloff(0.75, 0.5)).toBeCloseTo(0.5);
    expect(brushFalloff(1, 0.5)).toBe(0);
    expect(brushFalloff(0.99, 1)).toBe(1);
  });

  it("paints a disc and reports the rectangle changed", () => {
    const mask = new Uint8Array(10 * 10);
    const r = stampDab(mask, 10, 10, 5, 5, hard);
    expect(r).toEqual({ x: 3, y: 3, w: 5, h: 5 });
    expect(mask[5 * 10 + 5]).toBe(255);
    expect(mask[4 * 10 + 4]).toBe(255);
    expect(mask[3 * 10 + 3]).toBe(0); // a corner is outside the disc
    expect(mask[0]).toBe(0);
  });

  it("clips at the image's edges and paints nothing off the image", () => {
    const mask = new Uint8Array(4 * 4);
    expect(stampDab(mask, 4, 4, 0, 0, hard)).toEqual({ x: 0, y: 0, w: 3, h: 3 });
    expect(mask[0]).toBe(255);
    expect(stampDab(mask, 4, 4, -20, -20, hard)).toBeNull();
    expect(stampDab(mask, 4, 4, 50, 2, hard)).toBeNull();
  });

  it("paints the pixel under a tiny brush", () => {
    const mask = new Uint8Array(3 * 3);
    stampDab(mask, 3, 3, 1.5, 1.5, { ...hard, radius: 0.2 });
    expect([...mask]).toEqual([0, 0, 0, 0, 255, 0, 0, 0, 0]);
  });

  it("does not build up past the opacity; erasing lowers", () => {
    const mask = new Uint8Array(5 * 5);
    const half = { ...hard, opacity: 0.5 };
    stampDab(mask, 5, 5, 2.5, 2.5, half);
    stampDab(mask, 5, 5, 2.5, 2.5, half);
    expect(mask[12]).toBe(128);
    stampDab(mask, 5, 5, 2.5, 2.5, hard);
    expect(mask[12]).toBe(255);
    stampDab(mask, 5, 5, 2.5, 2.5, { ...half, erase: true });
    expect(mask[12]).toBe(127);
    stampDab(mask, 5, 5, 2.5, 2.5, { ...hard, erase: true });
    expect(isEmptyMask(mask)).toBe(true);
  });

  it("soft brushes fade towards the rim", () => {
    const mask = new Uint8Array(21 * 21);
    stampDab(mask, 21, 21, 10.5, 10.5, { radius: 10, hardness: 0, opacity: 1, erase: false });
    const row = [...mask.slice(10 * 21, 11 * 21)];
    expect(row[10]).toBeGreaterThan(250);
    expect(row[15]).toBeLessThan(row[12]);
    expect(row[20]).toBeLessThan(10);
  });

  it("spaces dabs evenly along a segment", () => {
    expect(dabPoints([0, 0], [4, 0], 1)).toEqual([[1, 0], [2, 0], [3, 0], [4, 0]]);
    expect(dabPoints([0, 0], [0, 0], 1)).toEqual([]);
    expect(dabPoints([0, 0], [0.1, 0], 1)).toEqual([[0.1, 0]]);
  });

  it("rasterises a stroke with no gaps", () => {
    const w = 40;
    const mask = new Uint8Array(w * 10);
    stampDab(mask, w, 10, 2, 5, hard);
    const r = strokeSegment(mask, w, 10, [2, 5], [37, 5], hard);
    expect(r).toEqual({ x: 0, y: 3, w: 40, h: 5 });
    for (let x = 1; x < 38; x++) expect(mask[5 * w + x]).toBe(255);
    expect(mask[0]).toBe(0);
  });

  it("joins rectangles", () => {
    expect(unionRect(null, null)).toBeNull();
    expect(unionRect({ x: 1, y: 1, w: 2, h: 2 }, null)).toEqual({ x: 1, y: 1, w: 2, h: 2 });
    expect(unionRect({ x: 1, y: 1, w: 2, h: 2 }, { x: 5, y: 0, w: 1, h: 1 })).toEqual({ x: 1, y: 0, w: 5, h: 3 });
  });
});

describe("overlay", () => {
  it("tints a rectangle by the mask's strength", () => {
    const mask = new Uint8Array([0, 255, 0, 100]);
    const px = overlayPixels(mask, 2, { x: 1, y: 0, w: 1, h: 2 }, [1, 2, 3], 0.5);
    expect([...px]).toEqual([1, 2, 3, 128, 1, 2, 3, 50]);
  });
});

describe("history", () => {
  it("undoes and redoes changes, and a new change drops the redos", () => {
    const h = new MaskHistory();
    const mask = new Uint8Array([0, 0]);
    expect(h.undo(mask)).toBe(false);
    h.record(mask);
    mask[0] = 9;
    h.record(mask);
    mask[1] = 7;
    expect(h.undo(mask)).toBe(true);
    expect([...mask]).toEqual([9, 0]);
    expect(h.redo(mask)).toBe(true);
    expect([...mask]).toEqual([9, 7]);
    h.undo(mask);
    h.undo(mask);
    expect([...mask]).toEqual([0, 0]);
    expect(h.canUndo).toBe(false);
    expect(h.canRedo).toBe(true);
    h.record(mask);
    expect(h.canRedo).toBe(false);
  });

  it("keeps as many steps as fit its budget, at least one", () => {
    const h = new MaskHistory(10);
    const mask = new Uint8Array(4);
    for (let i = 1; i <= 5; i++) {
      h.record(mask);
      mask.fill(i);
    }
    expect(h.undo(mask)).toBe(true);
    expect(h.undo(mask)).toBe(true);
    expect(h.undo(mask)).toBe(false); // two steps of 4 bytes fit 10
    expect([...mask]).toEqual([3, 3, 3, 3]);
    const big = new MaskHistory(1);
    big.record(mask);
    big.record(mask);
    expect(big.undo(mask) && !big.undo(mask)).toBe(true);
  });
});

describe("saving", () => {
  it("names the upload and turns the reply into Load Image's value", () => {
    expect(maskFileName(1234)).toBe("clipspace-mask-1234.png");
    expect(savedImageValue({ name: "clipspace-mask-1.png", subfolder: "clipspace", type: "input" }))
      .toBe("clipspace/clipspace-mask-1.png [input]");
    expect(savedImageValue({ name: "m.png" })).toBe("m.png [input]");
  });
});
