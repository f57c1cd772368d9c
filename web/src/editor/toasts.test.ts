import { describe, expect, it } from "vitest";
import { retagged, type Toast, TOASTS_MAX, withToast } from "./Toasts";

const toast = (id: number, tag?: string, text = `t${id}`): Toast => ({ id, kind: "error", text, ...(tag ? { tag } : {}) });

describe("toasts", () => {
  it("replaces the toast of the same tag instead of stacking a second rejection under it", () => {
    let list = withToast([], toast(1, "rejection"));
    list = withToast(list, toast(2));
    list = withToast(list, toast(3, "rejection"));
    expect(list.map((t) => t.id)).toEqual([2, 3]);
    for (let id = 4; id < 12; id++) list = withToast(list, toast(id));
    expect(list).toHaveLength(TOASTS_MAX);
  });

  it("rewrites or removes a tagged toast while it is shown, and adds none", () => {
    const list = [toast(1), toast(2, "rejection", "3 inputs")];
    expect(retagged(list, "rejection", "2 inputs").map((t) => t.text)).toEqual(["t1", "2 inputs"]);
    expect(retagged(list, "rejection", null).map((t) => t.id)).toEqual([1]);
    expect(retagged(list, "rejection", "3 inputs")).toBe(list);
    expect(retagged([toast(1)], "rejection", "again")).toEqual([toast(1)]);
  });
});
