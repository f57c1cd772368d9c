import { describe, expect, it } from "vitest";
import { exactPrompt, formatBound, fromBigInt, parseJsonExact, stringifyJsonExact, toBigInt } from "./exactint";
import { nextControlValue, parseObjectInfo } from "./schema";
import { numberIssue } from "./widgetcheck";

const MAX64 = "18446744073709551615"; // 2^64-1, a seed's max
const info = `{"KSampler": {"display_name": "KSampler", "category": "sampling", "output": ["LATENT"],
  "input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": ${MAX64}, "control_after_generate": true}],
    "note": ["STRING", {"default": "12345678901234567890 stays text"}], "cfg": ["FLOAT", {"default": 1234567890123456.75}]}}}}`;

describe("64-bit integers", () => {
  const defs = parseObjectInfo(parseJsonExact(info) as never);
  const seed = defs.get("KSampler")!.inputs.find((i) => i.name === "seed")!;

  it("reads /object_info's 2^64-1 exactly (JSON.parse makes it 18446744073709552000)", () => {
    expect(String(JSON.parse(`[${MAX64}]`)[0])).toBe("18446744073709552000");
    expect(seed.exactMax).toBe(BigInt(MAX64));
    expect(formatBound(seed, "max")).toBe(MAX64);
    expect(typeof seed.options.max).toBe("number"); // the options hold no bigint (JSON-safe)
    const note = defs.get("KSampler")!.inputs.find((i) => i.name === "note")!;
    expect(note.options.default).toBe("12345678901234567890 stays text");
    expect(parseJsonExact(`{"a": [1.5e300, -12, ${MAX64}]}`, "string")).toEqual({ a: [1.5e300, -12, MAX64] });
  });

  it("keeps a big value as its exact text and checks it against the exact bounds", () => {
    expect(fromBigInt(BigInt(MAX64))).toBe(MAX64);
    expect(fromBigInt(5n)).toBe(5);
    expect(toBigInt(MAX64)).toBe(BigInt(MAX64));
    expect(numberIssue(seed, MAX64)).toBeNull();
    expect(numberIssue(seed, "18446744073709551616")).toBe(`18446744073709551616 is above the maximum ${MAX64}`);
    expect(numberIssue(seed, -1)).toBe("-1 is below the minimum 0");
  });

  it("increments and clamps exactly at the top of the range", () => {
    expect(nextControlValue(seed, MAX64, "increment")).toBe(MAX64);
    expect(nextControlValue(seed, MAX64, "decrement")).toBe("18446744073709551614");
    expect(nextControlValue(seed, 9007199254740991, "increment")).toBe("9007199254740992");
    expect(nextControlValue(seed, 7, "increment")).toBe(8);
  });

  it("sends a big seed as an exact JSON number", () => {
    const prompt = { 3: { class_type: "KSampler", inputs: { seed: MAX64, note: "99999999999999999999" } } };
    const body = stringifyJsonExact({ prompt: exactPrompt(prompt, defs) });
    expect(body).toBe(`{"prompt":{"3":{"class_type":"KSampler","inputs":{"seed":${MAX64},"note":"99999999999999999999"}}}}`);
    expect(stringifyJsonExact({ a: 1 }, 2)).toBe(JSON.stringify({ a: 1 }, null, 2));
  });
});
