import { describe, expect, it } from "vitest";
import { parseJsonExact, stringifyJsonExact } from "./exactint";
import {
  checkName, EMBED_KEY, failureText, filterEntries, graphCheck, nameOfPath, openable, parseListing, saveTarget, siblingPath,
  sortEntries, userdataSegment, userPath, whenText, withDocument,
} from "./library";

const UI = {
  last_node_id: 2, last_link_id: 1,
  nodes: [
    { id: 1, type: "PrimitiveInt", pos: [0, 0], size: [200, 80], widgets_values: [7] },
    { id: 2, type: "KSampler", pos: [300, 0], size: [300, 260], widgets_values: ["18446744073709551615", "fixed", 20] },
  ],
  links: [[1, 1, 0, 2, 0, "INT"]], groups: [], config: {}, extra: { ds: { scale: 1, offset: [0, 0] } }, version: 0.4,
};
const DOC = { format: "steerflow.workflow", version: 1, prompt: { 1: { class_type: "PrimitiveInt", inputs: { value: 7 } } }, layout: {} };

describe("library names", () => {
  it("takes a name as its file, refusing what no file can carry, and says why", () => {
    expect(checkName("my hearts - v2")).toEqual({ file: "my hearts - v2.json", name: "my hearts - v2" });
    expect(checkName("  portrait.json ")).toEqual({ file: "portrait.json", name: "portrait" });
    expect(checkName("héllo ❤️")).toEqual({ file: "héllo ❤️.json", name: "héllo ❤️" });
    expect(checkName("")).toEqual({ error: "a workflow needs a name" });
    expect(checkName(".json")).toEqual({ error: "a workflow needs a name" });
    expect(checkName("a/b")).toMatchObject({ error: expect.stringContaining("“/”") });
    expect(checkName("a:b")).toMatchObject({ error: expect.stringContaining("“:”") });
    expect(checkName("tab\there")).toMatchObject({ error: expect.stringContaining("control characters") });
    expect(checkName("a\u202egnp")).toMatchObject({ error: expect.stringContaining("control characters") });
    expect(checkName(".hidden")).toMatchObject({ error: expect.stringContaining("dot") });
    expect(checkName("..")).toMatchObject({ error: expect.stringContaining("dot") });
    expect(checkName("x".repeat(121))).toMatchObject({ error: expect.stringContaining("120") });
  });
  it("keeps a renamed file in its folder, and names an opened workflow by its file", () => {
    expect(siblingPath("a.json", "b.json")).toBe("b.json");
    expect(siblingPath("sub/deeper/a.json", "b.json")).toBe("sub/deeper/b.json");
    expect(nameOfPath("sub/My flow.json")).toBe("My flow");
    expect(userPath("sub/a.json")).toBe("workflows/sub/a.json");
  });
  it("sends a user file's path as one URL segment, as ComfyUI's front end does", () => {
    expect(userdataSegment("workflows/sub/a b#?.json")).toBe("userdata/workflows%2Fsub%2Fa%20b%23%3F.json");
  });
});

describe("listing", () => {
  const reply = [
    { path: "b.json", size: 10, modified: 2000, created: 1 },
    { path: "sub/a.json", size: 20, modified: 3000, created: 1 },
    { path: "A2.json", size: 30, modified: 1000, created: 1 },
    { path: "a10.json", size: 30, modified: 1000, created: 1 },
    { path: "notes.txt", size: 5, modified: 5000 },
    "plain.json", 42, null, { size: 3 },
  ];
  it("reads ComfyUI's full_info reply (and plain names), .json files only", () => {
    const got = parseListing(reply);
    expect(got.map((e) => e.path)).toEqual(["b.json", "sub/a.json", "A2.json", "a10.json", "plain.json"]);
    expect(got[1]).toEqual({ path: "sub/a.json", label: "sub/a", name: "a", modified: 3000, size: 20 });
    expect(got[4]).toMatchObject({ modified: 0, size: 0 });
    expect(parseListing({ error: "x" })).toEqual([]);
  });
  it("sorts newest first or by name (numbers as numbers, any case), and filters by path", () => {
    const got = parseListing(reply);
    expect(sortEntries(got, "newest").map((e) => e.label)).toEqual(["sub/a", "b", "A2", "a10", "plain"]);
    expect(sortEntries(got, "name").map((e) => e.label)).toEqual(["A2", "a10", "b", "plain", "sub/a"]);
    expect(filterEntries(got, " SUB ").map((e) => e.label)).toEqual(["sub/a"]);
    expect(filterEntries(got, "").length).toBe(5);
  });
});

describe("the document kept in a saved file", () => {
  it("opens as the very graph saved while the file's graph is unchanged", () => {
    const saved = withDocument(UI, DOC);
    expect((saved.extra as Record<string, unknown>).ds).toEqual(UI.extra.ds); // ComfyUI's view kept
    // written and read back as the server stores it (seeds beyond 2^53 exact)
    const read = parseJsonExact(stringifyJsonExact(saved, 2), "string");
    expect(openable(read)).toEqual({ obj: DOC, embedded: true });
  });
  it("checks a bigint and its decimal text alike (the export's reply and the file read back)", () => {
    const asBig = { ...UI, nodes: [UI.nodes[0], { ...UI.nodes[1], widgets_values: [18446744073709551615n, "fixed", 20] }] };
    expect(graphCheck(asBig)).toBe(graphCheck(UI));
  });
  it("opens the file's own graph once ComfyUI's front end changed it (the stale document is dropped)", () => {
    const saved = withDocument(UI, DOC) as typeof UI;
    const moved = { ...saved, nodes: [{ ...saved.nodes[0], pos: [50, 50] }, saved.nodes[1]] };
    const got = openable(moved);
    expect(got.embedded).toBe(false);
    expect((got.obj as typeof UI).nodes[0].pos).toEqual([50, 50]);
    expect((got.obj as typeof UI).extra).toEqual({ ds: UI.extra.ds });
    expect(EMBED_KEY in (got.obj as typeof UI).extra).toBe(false);
  });
  it("opens a file ComfyUI's front end wrote (or anything else) as it is", () => {
    expect(openable(UI)).toEqual({ obj: UI, embedded: false });
    expect(openable(DOC)).toEqual({ obj: DOC, embedded: false });
    const forged = { ...UI, extra: { [EMBED_KEY]: { check: "nope", document: DOC } } };
    expect(openable(forged).embedded).toBe(false);
  });
});

describe("failure messages", () => {
  const what = "Cannot save a.json to the library";
  it("say what happened, and that a failed save kept the graph", () => {
    expect(failureText(what, { network: true, message: "Failed to fetch" }, true)).toBe(
      "Cannot save a.json to the library: the server cannot be reached (Failed to fetch). "
      + "Your graph is still on the canvas (Export downloads it as a file).");
    expect(failureText(what, { status: 413, message: "the body exceeds 32 MiB" }, true)).toContain(
      "too large for the server: the body exceeds 32 MiB.");
    expect(failureText(what, { status: 400, message: "invalid file name 'x': empty" })).toBe(
      "Cannot save a.json to the library: the server refused the name: invalid file name 'x': empty.");
    expect(failureText("Cannot delete a", { status: 404, message: "no user file" })).toContain("no longer in the library");
    expect(failureText(what, { status: 500 })).toBe("Cannot save a.json to the library: the server refused it (500).");
  });
  it("tell when a workflow last changed", () => {
    const now = Date.UTC(2026, 0, 10, 12);
    expect(whenText(0, now)).toBe("");
    expect(whenText(now - 5_000, now)).toBe("just now");
    expect(whenText(now - 5 * 60_000, now)).toBe("5 min ago");
    expect(whenText(now - 3 * 3_600_000, now)).toBe("3 h ago");
    expect(whenText(Date.UTC(2025, 11, 24, 12), now)).toBe("2025-12-24");
  });
});

describe("saveTarget", () => {
  it("saves over the graph's own file in its folder, not a new top-level one", () => {
    expect(saveTarget("proj/sub.json", "sub.json")).toEqual({ path: "proj/sub.json", renameFrom: null });
    expect(saveTarget("a/b/c.json", "c.json")).toEqual({ path: "a/b/c.json", renameFrom: null });
    expect(saveTarget("top.json", "top.json")).toEqual({ path: "top.json", renameFrom: null });
  });

  it("a new name renames the graph's file in its folder; a graph from no file is a new top-level file", () => {
    expect(saveTarget("proj/sub.json", "other.json")).toEqual({ path: "proj/other.json", renameFrom: "proj/sub.json" });
    expect(saveTarget("alpha.json", "beta.json")).toEqual({ path: "beta.json", renameFrom: "alpha.json" });
    expect(saveTarget(null, "sub.json")).toEqual({ path: "sub.json", renameFrom: null });
  });
});
