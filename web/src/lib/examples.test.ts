import { describe, expect, it } from "vitest";
import { byTitle } from "./examples";

describe("byTitle", () => {
  it("puts text to image first, then the examples by title", () => {
    const ex = (name: string, title: string) => ({ name, title });
    const sorted = byTitle([ex("sega.json", "SEGA"), ex("a.json", "Upscale"), ex("txt2img.json", "Text to image"),
      ex("b.json", "Depth")]);
    expect(sorted.map((e) => e.name)).toEqual(["txt2img.json", "b.json", "sega.json", "a.json"]);
  });
});
