import { describe, expect, it } from "vitest";
import { changedInputs, readUndoKey, undoKey } from "./undo";

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

describe("undoKey", () => {
  const doc = { prompt: { "3": { class_type: "KSampler", inputs: { steps: 20 } } }, layout: {} };

  it("keeps the document's name with the document", () => {
    expect(readUndoKey(undoKey(doc, "txt2img"))).toEqual({ doc, name: "txt2img" });
  });

  it("tells apart the same graph under two names (an Open of a copy is its own step)", () => {
    expect(undoKey(doc, "a")).not.toBe(undoKey(doc, "b"));
    expect(undoKey(structuredClone(doc), "a")).toBe(undoKey(doc, "a"));
  });
});
