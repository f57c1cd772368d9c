import { describe, expect, it } from "vitest";
import { changedInputs } from "./undo";

describe("changedInputs", () => {
  const before = {
    "3": { class_type: "KSampler", inputs: { steps: 0, cfg: 7.5, positive: ["6", 0] } },
    "5": { class_type: "EmptyLatentImage", inputs: { width: 63 } },
  };

  it("lists the inputs whose value or link an undo changed", () => {
    const after = {
      "3": { class_type: "KSampler", inputs: { steps: 20, cfg: 7.5 } },
      "5": { class_type: "EmptyLatentImage", inputs: { width: 63 } },
    };
    expect(changedInputs(before, after)).toEqual([["3", "steps"], ["3", "positive"]]);
  });

  it("ignores nodes only one side has, and equal links", () => {
    const after = {
      "3": { class_type: "KSampler", inputs: { steps: 0, cfg: 7.5, positive: ["6", 0] } },
      "9": { class_type: "SaveImage", inputs: { filename_prefix: "x" } },
    };
    expect(changedInputs(before, after)).toEqual([]);
  });
});
