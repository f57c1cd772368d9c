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

  it("reads a file with a string of megabytes (an embedded image) and the big integers around it", () => {
    // the token regex overflowed the stack on an ~8 MB string: a valid workflow did not open
    const long = "QUJD".repeat(3_000_000); // 12 MB of base64
    const text = `{"seed": ${MAX64}, "image": "${long}", "esc": "a \\"${MAX64}\\" \\\\", "after": [${MAX64}, 12]}`;
    const read = parseJsonExact(text, "string") as Record<string, unknown>;
    expect(read.seed).toBe(MAX64);
    expect((read.image as string).length).toBe(long.length);
    expect(read.esc).toBe(`a "${MAX64}" \\`);
    expect(read.after).toEqual([MAX64, 12]);
    expect((parseJsonExact(`{"image": "${long}"}`) as { image: string }).image.length).toBe(long.length);
  });

  it("refuses what is not JSON as JSON.parse does (a SyntaxError), not as some other value", () => {
    expect(() => parseJsonExact("this is not json")).toThrow(SyntaxError);
    expect(() => parseJsonExact(`{"a": "unterminated ${MAX64}`)).toThrow(SyntaxError);
    expect(() => parseJsonExact(`{"a": ${MAX64},}`)).toThrow(SyntaxError);
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
