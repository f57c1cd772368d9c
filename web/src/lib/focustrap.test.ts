import { describe, expect, it } from "vitest";
import { trappedTab } from "./focustrap";

describe("trappedTab (the focus stays inside a modal dialog)", () => {
  const items = ["search", "close", "card1", "card2"];

  it("moves to the next control, and from the last one back to the first", () => {
    expect(trappedTab(items, "search", false)).toBe("close");
    expect(trappedTab(items, "card2", false)).toBe("search");
  });

  it("Shift+Tab moves back, and from the first control to the last", () => {
    expect(trappedTab(items, "close", true)).toBe("search");
    expect(trappedTab(items, "search", true)).toBe("card2");
  });

  it("brings a focus that is outside the dialog (the toolbar behind it, <body>) back in", () => {
    expect(trappedTab(items, "toolbar Clear", false)).toBe("search");
    expect(trappedTab(items, null, true)).toBe("card2");
  });

  it("no control: nothing to move to", () => {
    expect(trappedTab([], "x", false)).toBeNull();
  });

  it("four Tabs from the search field of the drill's Examples dialog never reach the toolbar", () => {
    let at: string | null = "search";
    for (let i = 0; i < 4; i++) at = trappedTab(items, at, false);
    expect(items).toContain(at);
  });
});
