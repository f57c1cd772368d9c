import { describe, expect, it } from "vitest";
import { pointerMoved } from "./hover";

describe("pointerMoved (a palette opened under a still pointer keeps its first entry active)", () => {
  it("takes only a change of position as a move", () => {
    expect(pointerMoved({ x: 10, y: 20 }, 10, 20)).toBe(false); // the list appeared under the pointer
    expect(pointerMoved({ x: 10, y: 20 }, 11, 20)).toBe(true);
    expect(pointerMoved(null, 5, 5)).toBe(false); // first sight: where it is now is known from here on
  });
});
