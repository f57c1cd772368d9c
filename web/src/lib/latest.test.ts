import { describe, expect, it } from "vitest";
import type { GalleryItem } from "./runstore";
import { latestImages } from "./latest";

const item = (promptId: string | undefined, i: number): GalleryItem =>
  ({ filename: `${promptId}_${i}.png`, subfolder: "", type: "output", node: "9", promptId, key: `${promptId}:${i}` });

describe("latestImages", () => {
  it("is the newest prompt's images only, at most max", () => {
    const gallery = [item("b", 0), item("b", 1), item("a", 0), item("b", 2)];
    expect(latestImages(gallery).map((g) => g.key)).toEqual(["b:0", "b:1", "b:2"]);
    expect(latestImages(gallery, 2).map((g) => g.key)).toEqual(["b:0", "b:1"]);
  });

  it("is nothing before any image, and one image when the prompt is unknown", () => {
    expect(latestImages([])).toEqual([]);
    expect(latestImages([item(undefined, 0), item(undefined, 1)]).map((g) => g.key)).toEqual(["undefined:0"]);
  });
});
