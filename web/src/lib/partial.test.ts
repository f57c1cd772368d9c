import { describe, expect, it } from "vitest";
import { partialFields, selectedOutputs } from "./partial";
import { testDefs } from "./testdefs";

describe("run selected outputs", () => {
  const defs = testDefs();

  it("keeps only selected output nodes", () => {
    const nodes = [
      { id: "3", type: "KSampler", selected: true },
      { id: "9", type: "SaveImage", selected: true },
      { id: "10", type: "SaveImage", selected: false },
      { id: "11", type: "NoSuchType", selected: true },
    ];
    expect(selectedOutputs(nodes, defs)).toEqual(["9"]);
    expect(selectedOutputs(nodes.map((n) => ({ ...n, selected: false })), defs)).toEqual([]);
  });

  it("adds partial_execution_targets only for a partial run", () => {
    expect(partialFields(["9", "12"])).toEqual({ partial_execution_targets: ["9", "12"] });
    expect(partialFields([])).toEqual({});
    expect(partialFields()).toEqual({});
  });
});
