import { describe, expect, it } from "vitest";
import { collapseToFit, rowWidth, type ToolbarItem } from "./toolbarfit";

const ITEMS: ToolbarItem[] = [
  { key: "brand", width: 80, rank: 0, menu: false },
  { key: "queue", width: 60 },
  { key: "undo", width: 50, rank: 3, menu: true },
  { key: "redo", width: 50, rank: 3, menu: true },
  { key: "export", width: 90, rank: 2, menu: true },
  { key: "refresh", width: 70, rank: 1, menu: true },
  { key: "doc", width: 60 },
];
const total = rowWidth(ITEMS, 5, 50, false); // 460 + 6 gaps

describe("collapseToFit", () => {
  it("keeps everything when the row fits", () => {
    expect(total).toBe(490);
    expect(collapseToFit({ items: ITEMS, available: 490, gap: 5, more: 50 })).toEqual([]);
    expect(collapseToFit({ items: ITEMS, available: 1920, gap: 5, more: 50 })).toEqual([]);
  });

  it("hides the brand first: it is no control, so no More button is needed", () => {
    expect(collapseToFit({ items: ITEMS, available: 420, gap: 5, more: 50 })).toEqual(["brand"]);
  });

  it("counts the More button once an item moves into the menu", () => {
    // without the brand the row is 405; refresh out saves 75 but the More button costs 55: 385
    expect(collapseToFit({ items: ITEMS, available: 400, gap: 5, more: 50 })).toEqual(["brand", "refresh"]);
    expect(collapseToFit({ items: ITEMS, available: 384, gap: 5, more: 50 })).toEqual(["brand", "export", "refresh"]);
  });

  it("takes items of equal rank from the end of the row first", () => {
    // brand, refresh and export out: 220 + More 50 + 4 gaps = 290 with undo and redo still in
    expect(collapseToFit({ items: ITEMS, available: 274, gap: 5, more: 50 }))
      .toEqual(["brand", "redo", "export", "refresh"]);
  });

  it("never takes an item without a rank: a row too narrow for them wraps", () => {
    const out = collapseToFit({ items: ITEMS, available: 10, gap: 5, more: 50 });
    expect(out).toEqual(["brand", "undo", "redo", "export", "refresh"]);
    expect(out).not.toContain("queue");
    expect(out).not.toContain("doc");
  });
});
