import { describe, expect, it } from "vitest";
import { GROUP_PAD, GROUP_TITLE, groupAround, nodesInside, parseGroups } from "./groups";

describe("groups", () => {
  it("keeps valid ComfyUI groups and drops the rest", () => {
    const got = parseGroups([
      { title: "Loaders", bounding: [0, 0, 300, 200], color: "#8A8", font_size: 24, extra: 1 },
      { title: "bad", bounding: [0, 0, "x", 1] },
      { bounding: [1, 2, 3, 4], color: "red" },
      null,
    ]);
    expect(got).toEqual([
      { title: "Loaders", bounding: [0, 0, 300, 200], color: "#8A8", font_size: 24 },
      { title: "Group", bounding: [1, 2, 40, 40] },
    ]);
    expect(parseGroups("x")).toEqual([]);
  });

  it("fits a group around nodes and finds the nodes inside it", () => {
    const a = { x: 100, y: 100, width: 260, height: 150 };
    const b = { x: 400, y: 120, width: 260, height: 300 };
    const g = groupAround([a, b], "Prompt");
    expect(g.bounding).toEqual([100 - GROUP_PAD, 100 - GROUP_PAD - GROUP_TITLE, 560 + 2 * GROUP_PAD, 320 + 2 * GROUP_PAD + GROUP_TITLE]);
    const outside = { x: 900, y: 100, width: 260, height: 100 };
    expect(nodesInside(g, new Map([["a", a], ["b", b], ["c", outside]]))).toEqual(["a", "b"]);
  });
});
