import { describe, expect, it } from "vitest";
import { colorIssue, fromPicker, isColorInput, pickerValue } from "./color";
import { widgetDefs } from "./frontendwidgets.fixture";
import { defaultValue, parseNodeSchema } from "./schema";

describe("COLOR widget", () => {
  it("draws Color Picker's color and Crop Image to Mask's background as colour pickers", () => {
    const defs = widgetDefs();
    expect(defs.get("ColorToRGBInt")!.inputs[0]).toMatchObject({ name: "color", type: "STRING", widget: true, draw: "color" });
    const bg = defs.get("ImageCropToMask")!.inputs.find((i) => i.name === "background")!;
    expect(bg.draw).toBe("color");
    // ComfyUI's own COLOR type too (its default black), and not a plain text
    const comfy = parseNodeSchema("X", { input: { required: { c: ["COLOR", {}], t: ["STRING", { default: "hello" }] } } });
    expect(comfy.inputs[0]).toMatchObject({ type: "COLOR", widget: true });
    expect(defaultValue(comfy.inputs[0])).toBe("#000000");
    expect(isColorInput(comfy.inputs[1])).toBe(false);
    expect(isColorInput({ type: "STRING", options: { default: "#ffffff", multiline: true } })).toBe(false);
  });

  it("stores the picked colour as #rrggbb, keeping a typed alpha", () => {
    expect(pickerValue("#FF8000")).toBe("#ff8000");
    expect(pickerValue("#ff800080")).toBe("#ff8000");
    expect(pickerValue("red")).toBe("#000000");
    expect(fromPicker("#00FF00", "#ff8000")).toBe("#00ff00");
    expect(fromPicker("#00ff00", "#ff800080")).toBe("#00ff0080");
    expect(fromPicker("nonsense", "#123456")).toBe("#123456");
  });

  it("marks what the server refuses", () => {
    expect(colorIssue("#ff8000")).toBeNull();
    expect(colorIssue("#ff800080")).toBeNull();
    expect(colorIssue("ff8000")).toBeNull(); // Crop Image to Mask's background takes it
    expect(colorIssue("red")).toMatch(/#RRGGBB/);
    expect(colorIssue("#ff80")).toMatch(/not a colour/);
  });
});
