import { describe, expect, it } from "vitest";
import { fitFontSize, stillCut } from "./fittext";

describe("a long number shows whole in its field", () => {
  // a 20-digit seed at 13 px is ~166 px wide; the seed field beside its control menu has ~146 px
  it("keeps the field's font when the value fits", () => {
    expect(fitFontSize(16, 146, 13, 9)).toBe(13);
    expect(fitFontSize(146, 146, 13, 9)).toBe(13);
  });

  it("draws a value too long for the field smaller, in half pixels, until it fits", () => {
    const size = fitFontSize(166, 146, 13, 9);
    expect(size).toBe(11);
    expect((166 * size) / 13).toBeLessThanOrEqual(146);
    expect(stillCut(166, 146, 13, size)).toBe(false);
  });

  it("never goes below the smallest size: then the field scrolls (the tooltip has it all)", () => {
    expect(fitFontSize(600, 146, 13, 9)).toBe(9);
    expect(stillCut(600, 146, 13, 9)).toBe(true);
  });

  it("leaves a field not laid out alone", () => {
    expect(fitFontSize(166, 0, 13, 9)).toBe(13);
    expect(fitFontSize(0, 146, 13, 9)).toBe(13);
  });
});
