import { describe, expect, it } from "vitest";
import { searchDefs } from "./search";
import { testDefs } from "./testdefs";

describe("palette search", () => {
  const defs = testDefs();
  const names = (q: string, only?: Set<string>) => searchDefs(defs, q, only).map((d) => d.type);

  it("matches display names, type ids and categories, best first", () => {
    expect(names("sample")[0]).toBe("KSampler");
    expect(names("KSampler")).toEqual(["KSampler"]);
    expect(names("latent")).toEqual(expect.arrayContaining(["EmptyLatentImage", "VAEDecode", "VAEEncode"]));
    expect(names("image save")).toEqual(["SaveImage"]);
    expect(names("utils/primitive").sort()).toEqual(["PrimitiveBoolean", "PrimitiveFloat", "PrimitiveInt", "PrimitiveString"]);
    expect(names("no such node")).toEqual([]);
  });

  it("lists everything by category without a query, and honours a filter", () => {
    const all = searchDefs(defs, "");
    expect(all).toHaveLength(defs.size);
    const cats = all.map((d) => d.category);
    expect(cats).toEqual([...cats].sort((a, b) => a.localeCompare(b)));
    expect(names("", new Set(["VAEDecode", "KSampler"])).sort()).toEqual(["KSampler", "VAEDecode"]);
  });
});
