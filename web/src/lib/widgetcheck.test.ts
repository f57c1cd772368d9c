import { describe, expect, it } from "vitest";
import type { InputDef } from "./schema";
import { dragValue, numberIssue, numberText, parseNumberText, parseWidgetText, stepValue } from "./widgetcheck";

const steps = { name: "steps", type: "INT", required: true, widget: true, options: { min: 1, max: 10000 } } as unknown as InputDef;
const cfg = { name: "cfg", type: "FLOAT", required: true, widget: true, options: { min: 0, max: 100, step: 0.1 } } as unknown as InputDef;

describe("number widgets", () => {
  it("shows the value that runs, not a rounding of it", () => {
    expect(numberText(5e-7)).toBe("5e-7");
    expect(numberText(7.456789)).toBe("7.456789");
    expect(numberText(100.004)).toBe("100.004");
    expect(numberText(7.5)).toBe("7.5");
    expect(numberText("18446744073709551615")).toBe("18446744073709551615");
    expect(numberText(undefined)).toBe("");
    // what it shows reads back as the same value (a click in and out changes nothing)
    for (const v of [5e-7, 7.456789, 0.1 + 0.2, 1e21]) expect(parseNumberText(numberText(v))).toBe(v);
  });

  it("parses only whole numbers of text", () => {
    expect(parseNumberText(" 7.5 ")).toBe(7.5);
    expect(parseNumberText("-5")).toBe(-5);
    expect(parseNumberText("abc")).toBeNull();
    expect(parseNumberText("")).toBeNull();
    expect(parseNumberText("Infinity")).toBeNull();
    for (const t of ["0x10", "0b11", "0o7", "1_000", "--1", "1e", ".", "+"]) expect(parseNumberText(t)).toBeNull();
    expect(parseNumberText(".5")).toBe(0.5);
    expect(parseNumberText("5.")).toBe(5);
    expect(parseNumberText("+2.5e-1")).toBe(0.25);
    expect(parseWidgetText({ name: "seed", type: "INT", options: {} } as never, "0x10")).toBeNull();
  });

  it("names what is wrong instead of changing the value", () => {
    expect(numberIssue(steps, 20)).toBeNull();
    expect(numberIssue(steps, -5)).toBe("-5 is below the minimum 1");
    expect(numberIssue(steps, 20000)).toBe("20000 is above the maximum 10000");
    expect(numberIssue(steps, 3.5)).toBe("3.5 is not a whole number");
    expect(numberIssue(cfg, "abc")).toBe("“abc” is not a number");
    expect(numberIssue(cfg, "")).toBe("empty: enter a number");
  });

  it("flags an INT off its step as the server would (counted from the minimum)", () => {
    const width = { ...steps, options: { min: 8, max: 16384, step: 8 } } as unknown as InputDef;
    expect(numberIssue(width, 64)).toBeNull();
    expect(numberIssue(width, 63)).toBe("63 is not 8 + k*8 (nearest: 56 or 64)");
    const offset = { ...steps, options: { min: 8, max: 100, step: 4 } } as unknown as InputDef;
    expect(numberIssue(offset, 12)).toBeNull();
    expect(numberIssue(offset, 14)).toBe("14 is not 8 + k*4 (nearest: 12 or 16)");
    const x = { ...steps, options: { min: 0, max: 4096, step: 8 } } as unknown as InputDef;
    expect(numberIssue(x, 20)).toBe("20 is not a multiple of 8 (nearest: 16 or 24)");
    const seed = { ...steps, options: { min: 0, max: 2 ** 64 - 1 } } as unknown as InputDef;
    expect(numberIssue(seed, "18446744073709551615")).toBeNull(); // no step: any whole number
  });

  it("steps with the arrow keys inside the range", () => {
    expect(stepValue(cfg, 7.5, 1)).toBe(7.6);
    expect(stepValue(cfg, 0.05, -1)).toBe(0);
    expect(stepValue(steps, 10000, 1)).toBe(10000);
  });

  it("drags one step per pixel past a small dead zone, clamped, whole for an INT", () => {
    expect(dragValue(steps, 20, 2)).toBe(20); // a click, not a drag
    expect(dragValue(steps, 20, 43)).toBe(60);
    expect(dragValue(steps, 20, -43)).toBe(1); // not below the minimum
    expect(dragValue(steps, 9990, 500)).toBe(10000);
    expect(dragValue(cfg, 7.5, 13)).toBe(8.5); // 10 steps of 0.1, no float noise
    expect(dragValue(cfg, 0.3, -100)).toBe(0);
    const wide = { ...steps, type: "INT", options: { min: 0, step: 10 } } as unknown as InputDef;
    expect(dragValue(wide, 0, 8)).toBe(50); // scaled by the step
    expect(dragValue(steps, "abc", 10)).toBe(7); // not a number yet: from 0, into the range
  });

  it("reads an INT's digits exactly", () => {
    expect(parseWidgetText(steps, "18446744073709551615")).toBe("18446744073709551615");
    expect(parseWidgetText(steps, "42")).toBe(42);
    expect(parseWidgetText(cfg, "4.5")).toBe(4.5);
  });
});
