import { describe, expect, it } from "vitest";
import {
  boxFieldIssue, boxFields, boxFromPoints, boxIssues, boxPercent, croppedSize, DEFAULT_BOX, fitBox, moveBox,
  numericBox, resizeBox, withField,
} from "./boundingbox";
import { defaultValues, graphToPromptFor, widgetDefs } from "./frontendwidgets.fixture";

describe("BOUNDING_BOX value", () => {
  it("reads ComfyUI's {x, y, width, height}, a key left out at its default", () => {
    expect(boxFields({ x: 5, width: 40 })).toEqual({ x: 5, y: 0, width: 40, height: 512 });
    expect(boxFields(null)).toEqual(DEFAULT_BOX);
    expect(boxFields([1, 2])).toEqual(DEFAULT_BOX);
    expect(numericBox({ x: "abc", y: 3 })).toEqual({ x: 0, y: 3, width: 512, height: 512 });
  });

  it("keeps what was typed and marks it, with the server's bounds", () => {
    const v = withField({ x: 1, y: 2, width: 3, height: 4 }, "width", "abc");
    expect(v).toEqual({ x: 1, y: 2, width: "abc", height: 4 });
    expect(boxIssues(v)).toEqual(["width must be a whole number"]);
    expect(boxFieldIssue("x", -1)).toBe("x must be 0 to 16384, got -1");
    expect(boxFieldIssue("width", 0)).toBe("width must be 1 to 16384, got 0");
    expect(boxFieldIssue("height", 16385)).toBe("height must be 1 to 16384, got 16385");
    expect(boxFieldIssue("y", 2.5)).toBe("y must be a whole number, not 2.5");
    expect(boxFieldIssue("x", 0)).toBeNull();
    expect(boxIssues({ x: 0, y: 0, width: 16384, height: 1 })).toEqual([]);
  });
});

describe("dragging the box over a 100×80 image", () => {
  const box = { x: 10, y: 10, width: 30, height: 20 };

  it("moves it, kept inside the image", () => {
    expect(moveBox(box, 5, -3, 100, 80)).toEqual({ x: 15, y: 7, width: 30, height: 20 });
    expect(moveBox(box, 500, 500, 100, 80)).toEqual({ x: 70, y: 60, width: 30, height: 20 });
    expect(moveBox(box, -500, -500, 100, 80)).toEqual({ x: 0, y: 0, width: 30, height: 20 });
  });

  it("resizes from a corner, the opposite one staying put, at least a pixel", () => {
    expect(resizeBox(box, "se", 10, 5, 100, 80)).toEqual({ x: 10, y: 10, width: 40, height: 25 });
    expect(resizeBox(box, "nw", -5, -5, 100, 80)).toEqual({ x: 5, y: 5, width: 35, height: 25 });
    expect(resizeBox(box, "se", -100, -100, 100, 80)).toEqual({ x: 10, y: 10, width: 1, height: 1 });
    expect(resizeBox(box, "ne", 1000, -1000, 100, 80)).toEqual({ x: 10, y: 0, width: 90, height: 30 });
    expect(resizeBox(box, "sw", -1000, 1000, 100, 80)).toEqual({ x: 0, y: 10, width: 40, height: 70 });
  });

  it("draws a new one between two points, either order, inside the image", () => {
    expect(boxFromPoints(50, 40, 20, 10, 100, 80)).toEqual({ x: 20, y: 10, width: 30, height: 30 });
    expect(boxFromPoints(-10, -10, 500, 500, 100, 80)).toEqual({ x: 0, y: 0, width: 100, height: 80 });
    expect(boxFromPoints(5, 5, 5, 5, 100, 80)).toEqual({ x: 5, y: 5, width: 1, height: 1 });
  });

  it("fits a stored box (the default 512×512) into the image before dragging it", () => {
    expect(fitBox(DEFAULT_BOX, 100, 80)).toEqual({ x: 0, y: 0, width: 100, height: 80 });
    expect(moveBox(DEFAULT_BOX, 10, 10, 100, 80)).toEqual({ x: 0, y: 0, width: 100, height: 80 });
  });

  it("draws and sizes the crop as the server makes it (cut at the edges)", () => {
    expect(boxPercent({ x: 50, y: 40, width: 100, height: 100 }, 100, 80)).toEqual({ left: 50, top: 50, width: 50, height: 50 });
    expect(croppedSize({ x: 50, y: 40, width: 100, height: 100 }, 100, 80)).toEqual({ width: 50, height: 40 });
    // a corner past the image moves onto its last row / column
    expect(croppedSize({ x: 500, y: 500, width: 10, height: 10 }, 100, 80)).toEqual({ width: 1, height: 1 });
    expect(croppedSize({ x: 10, y: 10, width: 30, height: 20 }, 100, 80)).toEqual({ width: 30, height: 20 });
  });
});

describe("Crop Image's schema on the canvas", () => {
  const defs = widgetDefs();

  it("draws crop_region as a widget holding ComfyUI's default box", () => {
    const crop = defs.get("ImageCropV2")!;
    const region = crop.inputs.find((i) => i.name === "crop_region")!;
    expect(region).toMatchObject({ type: "BOUNDING_BOX", widget: true, required: true });
    expect(defaultValues(crop)).toEqual({ crop_region: { x: 0, y: 0, width: 512, height: 512 } });
    // a new node's default is its own object, not the schema's
    expect(defaultValues(crop).crop_region).not.toBe(region.options.default);
  });

  it("sends the box as the input's value, and a link when linked", () => {
    const prompt = graphToPromptFor("ImageCropV2", { crop_region: { x: 4, y: 8, width: 16, height: 32 } });
    expect(prompt.n.inputs).toEqual({ crop_region: { x: 4, y: 8, width: 16, height: 32 } });
    const linked = graphToPromptFor("ImageCropV2", { crop_region: { x: 4, y: 8, width: 16, height: 32 } }, "crop_region");
    expect(linked.n.inputs.crop_region).toEqual(["src", 0]);
  });
});
