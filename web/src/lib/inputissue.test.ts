import { describe, expect, it } from "vitest";
import { inputMessages, widgetIssue } from "./inputissue";
import { RunStore } from "./runstore";
import type { InputDef } from "./schema";

const steps: InputDef = { name: "steps", type: "INT", widget: true, required: true, options: { default: 20, min: 1, max: 10000 } };
const ckpt: InputDef = {
  name: "ckpt_name", type: "COMBO", widget: true, required: true,
  options: { tooltip: "A file or diffusers folder in models/checkpoints" }, choices: ["steerflow-shapes"],
};
const box: InputDef = { name: "crop_region", type: "BOUNDING_BOX", widget: true, required: true, options: {} };
const color: InputDef = { name: "color", type: "COLOR", widget: true, required: true, options: {} };

// what the server answers for steps = -5 (engine/validation.py, through RunStore.setValidationErrors)
const refused = { 3: { errors: [{
  type: "value_smaller_than_min", message: "Value smaller than min",
  details: "input 'steps': Input should be greater than or equal to 1 (got -5)", extra_info: { input_name: "steps" },
}] } };

describe("one message per input", () => {
  it("a widget knows what is wrong with its own value", () => {
    expect(widgetIssue(steps, -5)).toBe("-5 is below the minimum 1");
    expect(widgetIssue(steps, 5)).toBeNull();
    expect(widgetIssue(ckpt, "sd_xl_base_1.0.safetensors")).toContain("is not one of ['steerflow-shapes']");
    expect(widgetIssue(box, { x: 0, y: 0, width: 0, height: 4 })).toBe("width must be 1 to 16384, got 0");
    expect(widgetIssue(color, "red")).toContain("is not a colour");
  });

  it("after a refused prompt, shows the server's message alone, not the widget's as well", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(refused);
    const server = store.getNode("3").errors!.filter((e) => e.input === "steps");
    const shown = inputMessages(widgetIssue(steps, -5), server);
    expect(shown).toEqual([{ message: "input 'steps': Input should be greater than or equal to 1 (got -5)", own: false }]);
  });

  it("while editing, shows the widget's own message: the edit took the server's away", () => {
    const store = new RunStore(() => undefined, () => undefined);
    store.setValidationErrors(refused);
    store.clearInputErrors("3", "steps"); // what the canvas does on every edit of the input
    const server = (store.getNode("3").errors ?? []).filter((e) => e.input === "steps");
    expect(inputMessages(widgetIssue(steps, -7), server)).toEqual([{ message: "-7 is below the minimum 1", own: true }]);
    expect(inputMessages(widgetIssue(steps, 7), server)).toEqual([]);
  });

  it("shows a message the server sends twice once, and one the widget cannot see", () => {
    const m = { message: "input 'steps': must be even for this scheduler" };
    expect(inputMessages(null, [m, m])).toEqual([{ message: m.message, own: false }]);
  });
});
