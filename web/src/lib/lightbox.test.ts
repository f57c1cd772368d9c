import { describe, expect, it } from "vitest";
import { lightboxSet, stepImage } from "./lightbox";

describe("the lightbox pages through its images", () => {
  const a = { filename: "a.png", subfolder: "", type: "output" };
  const b = { filename: "b.png", type: "output" };
  const c = { filename: "c.png" };

  it("opens at the clicked image of its gallery", () => {
    expect(lightboxSet(b, [a, b, c])).toEqual({ images: [a, b, c], index: 1 });
    // the same file under another object (a list re-read since) is found too
    expect(lightboxSet({ filename: "c.png", type: "output" }, [a, b, c]).index).toBe(2);
  });

  it("an image opened alone (or not in the set) is a set of one", () => {
    expect(lightboxSet(a)).toEqual({ images: [a], index: 0 });
    expect(lightboxSet({ filename: "z.png" }, [a, b])).toEqual({ images: [{ filename: "z.png" }], index: 0 });
  });

  it("ArrowRight / ArrowLeft go to the next / previous image, round at the ends", () => {
    expect(stepImage(0, 3, 1)).toBe(1);
    expect(stepImage(2, 3, 1)).toBe(0);
    expect(stepImage(0, 3, -1)).toBe(2);
    expect(stepImage(0, 1, 1)).toBe(0);
    expect(stepImage(0, 0, -1)).toBe(0);
  });
});
