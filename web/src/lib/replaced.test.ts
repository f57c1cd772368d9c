import { describe, expect, it } from "vitest";
import { keepReplaced, listReplaced, MAX_REPLACED, REPLACED_KEY } from "./replaced";

function memory(limit = Infinity) {
  const data = new Map<string, string>();
  return {
    getItem: (k: string) => data.get(k) ?? null,
    setItem: (k: string, v: string) => {
      if (v.length > limit) throw new DOMException("full", "QuotaExceededError");
      data.set(k, v);
    },
  };
}

describe("replaced graphs", () => {
  it("keeps the newest graphs first, at most MAX_REPLACED, a repeat not twice", () => {
    const s = memory();
    for (let i = 0; i < MAX_REPLACED + 2; i++) keepReplaced(s, `{"n":${i}}`, `g${i}`, i);
    expect(keepReplaced(s, `{"n":${MAX_REPLACED + 1}}`, "again", 99)).toBe(false);
    const list = listReplaced(s);
    expect(list.map((g) => g.name)).toEqual(["g6", "g5", "g4", "g3", "g2"]);
    // an older one opened again moves to the front, once
    keepReplaced(s, `{"n":3}`, "g3 again", 100);
    expect(listReplaced(s).map((g) => g.name)).toEqual(["g3 again", "g6", "g5", "g4", "g2"]);
  });
  it("drops the oldest when the storage is full, and reads a broken list as empty", () => {
    const s = memory(120);
    keepReplaced(s, "x".repeat(40), "a", 1);
    keepReplaced(s, "y".repeat(40), "b", 2);
    expect(listReplaced(s).map((g) => g.name)).toEqual(["b"]);
    s.setItem(REPLACED_KEY, "{not json");
    expect(listReplaced(s)).toEqual([]);
  });
});
