import { describe, expect, it } from "vitest";
import { keepReplaced, listReplaced, MAX_REPLACED, MAX_REPLACED_CHARS } from "./replaced";

function memory(limit = Infinity) {
  const data = new Map<string, string>();
  const size = () => [...data.values()].reduce((n, v) => n + v.length, 0);
  return {
    get length() { return data.size; },
    key: (i: number) => [...data.keys()][i] ?? null,
    getItem: (k: string) => data.get(k) ?? null,
    removeItem: (k: string) => { data.delete(k); },
    setItem: (k: string, v: string) => {
      if (size() - (data.get(k)?.length ?? 0) + v.length > limit) throw new DOMException("full", "QuotaExceededError");
      data.set(k, v);
    },
  };
}
const doc = (n: number, view = 0) => JSON.stringify({ prompt: { n }, layout: { viewport: { x: view } } });

describe("replaced graphs", () => {
  it("keeps the newest MAX_REPLACED, a graph kept already (its view aside) not twice", () => {
    const s = memory();
    for (let i = 0; i < MAX_REPLACED + 2; i++) expect(keepReplaced(s, doc(i), `g${i}`, i)).toBe("kept");
    expect(keepReplaced(s, doc(MAX_REPLACED + 1, 99), "same graph, moved view", 99)).toBe("known");
    expect(listReplaced(s).map((g) => g.name)).toEqual(["g6", "g5", "g4", "g3", "g2"]);
  });
  it("never overwrites another tab's graph kept at the same moment", () => {
    const s = memory();
    keepReplaced(s, doc(1), "tab A", 5);
    keepReplaced(s, doc(2), "tab B", 5);
    expect(listReplaced(s).map((g) => g.name).sort()).toEqual(["tab A", "tab B"]);
  });
  it("drops the oldest when the storage is full, and says when a graph cannot be kept", () => {
    const s = memory(200);
    keepReplaced(s, doc(1) + " ".repeat(60), "a", 1);
    expect(keepReplaced(s, doc(2) + " ".repeat(60), "b", 2)).toBe("kept");
    expect(listReplaced(s).map((g) => g.name)).toEqual(["b"]);
    expect(keepReplaced(s, doc(3) + " ".repeat(300), "c", 3)).toBe("no-room");
    expect(keepReplaced(s, "x".repeat(MAX_REPLACED_CHARS + 1), "d", 4)).toBe("too-large");
    s.setItem("steerflow.replaced.9-x", "{not json");
    expect(listReplaced(s).map((g) => g.name)).toEqual(["b"]);
  });
});
