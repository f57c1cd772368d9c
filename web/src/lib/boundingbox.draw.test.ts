import { describe, expect, it } from "vitest";
import { boxFromPoints, boxOverflow, boxPercent, coversImage, DEFAULT_BOX, pressMode } from "./boundingbox";

describe("drawing a new crop box over a box that covers the whole image", () => {
  it("knows ComfyUI's default 512×512 box covers a smaller image, and a box inside it does not", () => {
    expect(coversImage(DEFAULT_BOX, 64, 48)).toBe(true);
    expect(coversImage({ x: 0, y: 0, width: 64, height: 48 }, 64, 48)).toBe(true);
    expect(coversImage({ x: 8, y: 4, width: 40, height: 24 }, 64, 48)).toBe(false);
    expect(coversImage({ x: 0, y: 0, width: 64, height: 47 }, 64, 48)).toBe(false); // it can move down a row
    expect(coversImage(DEFAULT_BOX, 1024, 768)).toBe(false);
  });

  it("makes a drag inside a box that covers the image draw, where moving it would do nothing", () => {
    expect(pressMode(DEFAULT_BOX, 64, 48, false)).toBe("draw");
    expect(pressMode({ x: 8, y: 4, width: 40, height: 24 }, 64, 48, false)).toBe("move");
    expect(pressMode({ x: 8, y: 4, width: 40, height: 24 }, 64, 48, true)).toBe("draw"); // Alt: a new box
    // what that drag writes back: whole pixels inside the image, within the widget's bounds
    const drawn = boxFromPoints(10.4, 5.6, 40.2, 30.9, 64, 48);
    expect(drawn).toEqual({ x: 10, y: 6, width: 30, height: 25 });
    for (const v of Object.values(drawn)) expect(Number.isInteger(v)).toBe(true);
  });

  it("draws a box past the image as the part inside it, and says which sides are cut", () => {
    expect(boxPercent(DEFAULT_BOX, 64, 48)).toEqual({ left: 0, top: 0, width: 100, height: 100 });
    expect(boxOverflow(DEFAULT_BOX, 64, 48)).toEqual({ right: true, bottom: true, outside: false });
    expect(boxOverflow({ x: 8, y: 4, width: 40, height: 24 }, 64, 48)).toEqual({ right: false, bottom: false, outside: false });
    expect(boxOverflow({ x: 60, y: 0, width: 10, height: 48 }, 64, 48)).toEqual({ right: true, bottom: false, outside: false });
    expect(boxOverflow({ x: 100, y: 0, width: 10, height: 10 }, 64, 48).outside).toBe(true);
  });
});
