import { describe, expect, it } from "vitest";
import { changedInputs, readUndoKey, recordStep, segmentOf, StepFiles, type UndoHistory, undoKey } from "./undo";

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

describe("recordStep (the undo history)", () => {
  it("an opened graph recorded at load is the present, so an edit made right after undoes to it", () => {
    const h: UndoHistory = { past: [], present: null, future: [] };
    recordStep(h, "sega"); // the first graph: the base
    expect(h).toEqual({ past: [], present: "sega", future: [] });
    recordStep(h, "dreambooth steps=25"); // opened: its own step at once (loadGraph)
    recordStep(h, "dreambooth steps=7"); // the edit typed within the debounce's 200 ms
    expect(h.past).toEqual(["sega", "dreambooth steps=25"]);
    // one undo goes back to the opened graph, not past it to sega
    expect(h.past[h.past.length - 1]).toBe("dreambooth steps=25");
  });

  it("the same key again is no step; an amend changes the present step; undone steps go with a new one", () => {
    const h: UndoHistory = { past: ["a"], present: "b", future: ["c"] };
    expect(recordStep(h, "b")).toBe(false);
    expect(h).toEqual({ past: ["a"], present: "b", future: ["c"] });
    recordStep(h, "b moved", true);
    expect(h).toEqual({ past: ["a"], present: "b moved", future: ["c"] });
    recordStep(h, "d");
    expect(h).toEqual({ past: ["a", "b moved"], present: "d", future: [] });
  });

  it("keeps at most `max` steps to undo to", () => {
    const h: UndoHistory = { past: [], present: "0", future: [] };
    for (let i = 1; i <= 5; i++) recordStep(h, String(i), false, 3);
    expect(h.past).toEqual(["2", "3", "4"]);
  });
});

describe("StepFiles: the library file follows the graph through undo and redo", () => {
  // open alpha (a0), edit (a1), open beta (b0): as the editor records them
  const setup = () => {
    const h: UndoHistory = { past: [], present: null, future: [] };
    const files = new StepFiles();
    const opened = new Set<string>();
    const open = (key: string, path: string | null) => { recordStep(h, key); files.recorded(key, path); opened.add(key); };
    const edit = (key: string) => { recordStep(h, key); files.recorded(key); };
    const undo = () => { h.future.push(h.present!); h.present = h.past.pop()!; files.shown(h.present); };
    const redo = () => { h.past.push(h.present!); h.present = h.future.pop()!; files.shown(h.present); };
    return { h, files, opened, open, edit, undo, redo };
  };

  it("an undo of an Open brings back the file of the graph before; a redo the opened one", () => {
    const t = setup();
    t.open("a0", "alpha.json");
    t.edit("a1");
    t.open("b0", "proj/beta.json");
    expect(t.files.current).toBe("proj/beta.json");
    t.undo();
    expect(t.h.present).toBe("a1");
    expect(t.files.current).toBe("alpha.json"); // (it stayed on beta: Ctrl+S asked to replace alpha.json)
    t.redo();
    expect(t.files.current).toBe("proj/beta.json");
    t.open("c0", null); // an example, a Clear: no file
    t.undo();
    expect(t.files.current).toBe("proj/beta.json");
    t.redo();
    expect(t.files.current).toBeNull();
  });

  it("a save names the file of every step of its graph, not of the graphs opened before or after", () => {
    const t = setup();
    t.open("a0", "alpha.json");
    t.open("n0", null);
    t.edit("n1");
    t.edit("n2");
    t.open("b0", "beta.json");
    t.undo();
    t.undo(); // n1: the unsaved graph
    expect(segmentOf(t.h, t.opened)).toEqual(["n1", "n0", "n2"]);
    t.files.set("new.json", segmentOf(t.h, t.opened));
    t.undo();
    expect(t.files.current).toBe("new.json"); // n0, saved with it
    t.undo();
    expect(t.files.current).toBe("alpha.json");
    t.redo();
    t.redo();
    t.redo();
    expect(t.files.current).toBe("new.json"); // n2
    t.redo();
    expect(t.files.current).toBe("beta.json");
  });

  it("a renamed or deleted file is renamed or gone in every step", () => {
    const t = setup();
    t.open("a0", "alpha.json");
    t.open("b0", "beta.json");
    t.files.moved("alpha.json", "proj/alpha2.json");
    t.files.moved("beta.json", null);
    expect(t.files.current).toBeNull();
    t.undo();
    expect(t.files.current).toBe("proj/alpha2.json");
  });
});
