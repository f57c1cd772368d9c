import { describe, expect, it } from "vitest";
import { afterToggle, TABS, tabStep } from "./sidepanel";

describe("tabStep", () => {
  it("moves with the arrows, wrapping around, and jumps with Home and End", () => {
    expect(tabStep(TABS, "queue", "ArrowRight")).toBe("history");
    expect(tabStep(TABS, "gallery", "ArrowRight")).toBe("workflows");
    expect(tabStep(TABS, "workflows", "ArrowRight")).toBe("queue");
    expect(tabStep(TABS, "queue", "ArrowLeft")).toBe("workflows");
    expect(tabStep(TABS, "history", "Home")).toBe("queue");
    expect(tabStep(TABS, "history", "End")).toBe("workflows");
  });
  it("ignores other keys", () => {
    expect(tabStep(TABS, "queue", "Enter")).toBeNull();
    expect(tabStep(TABS, "queue", "ArrowDown")).toBeNull();
    expect(tabStep([], "queue", "ArrowRight")).toBeNull();
  });
});

describe("afterToggle", () => {
  it("opens on the key's tab, or closes when it shows it already", () => {
    expect(afterToggle(true, "queue", "history")).toEqual({ collapsed: false, tab: "history" });
    expect(afterToggle(false, "history", "history")).toEqual({ collapsed: true, tab: "history" });
  });
});
