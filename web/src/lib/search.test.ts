import { describe, expect, it } from "vitest";
import { parseNodeSchema } from "./schema";
import { searchDefs, searchText } from "./search";
import { nodesAcceptingType } from "./types";
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

  it("offers a dropped input's sources before the nodes that also take its type", () => {
    const only = new Set(["KSampler", "EmptyLatentImage", "VAEEncode"]);
    const sources = new Set(["EmptyLatentImage", "VAEEncode"]);
    // (KSampler is the more used, and came first)
    expect(searchDefs(defs, "", only).map((d) => d.type)[0]).toBe("KSampler");
    expect(searchDefs(defs, "", only, undefined, sources).map((d) => d.type)).toEqual(
      ["EmptyLatentImage", "VAEEncode", "KSampler"]);
  });

  it("finds a node by its search aliases, the technique's short name or its words", () => {
    const more = new Map(defs);
    more.set("SelfAttentionGuidance", parseNodeSchema("SelfAttentionGuidance", {
      name: "SelfAttentionGuidance", display_name: "Self-Attention Guidance", category: "model_patches",
      search_aliases: ["SAG", 3, "self attention guidance"], input: { required: {} }, output: ["MODEL"],
    }));
    expect(more.get("SelfAttentionGuidance")?.searchAliases).toEqual(["SAG", "self attention guidance"]);
    expect(searchDefs(more, "sag").map((d) => d.type)[0]).toBe("SelfAttentionGuidance");
    expect(searchDefs(more, "attention guidance self").map((d) => d.type)).toContain("SelfAttentionGuidance");
    expect(searchDefs(more, "sag nothing").map((d) => d.type)).not.toContain("SelfAttentionGuidance");
  });

  it("lists everything by category without a query, and honours a filter", () => {
    const all = searchDefs(defs, "");
    expect(all).toHaveLength(defs.size);
    const cats = all.map((d) => d.category);
    const rank = (c: string) => (c.startsWith("_") ? 1 : 0);  // test nodes last
    expect(cats).toEqual([...cats].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)));
    expect(names("", new Set(["VAEDecode", "KSampler"])).sort()).toEqual(["KSampler", "VAEDecode"]);
  });

  it("finds a node by its id typed as words, before test nodes that start alike", () => {
    const more = new Map(defs);
    const text = (type: string, name: string, category: string) => more.set(type, parseNodeSchema(type, {
      name: type, display_name: name, category, input: { required: {} }, output: ["CONDITIONING"],
    }));
    text("CLIPTextEncode", "Encode Prompt", "conditioning");
    text("CLIPTextEncodeControlnet", "CLIP Text Encode (Controlnet)", "_for_testing/conditioning");
    const found = searchDefs(more, "clip text encode").map((d) => d.type);
    expect(found[0]).toBe("CLIPTextEncode");
    expect(found).toContain("CLIPTextEncodeControlnet");
  });

  it("finds Encode Prompt by ComfyUI's display name, brackets and all, and ranks it first for its words", () => {
    const more = new Map(defs);
    const text = (type: string, name: string, category: string, aliases?: string[]) => more.set(type, parseNodeSchema(type, {
      name: type, display_name: name, category, input: { required: {} }, output: ["CONDITIONING"],
      ...(aliases ? { search_aliases: aliases } : {}),
    }));
    text("CLIPTextEncodeSDXLRefiner", "CLIP Text Encode (SDXL Refiner)", "advanced/conditioning");
    text("CLIPTextEncodeSDXL", "CLIP Text Encode (SDXL)", "advanced/conditioning");
    text("CLIPTextEncodeControlnet", "CLIP Text Encode (Controlnet)", "_for_testing/conditioning");
    const first = (q: string) => searchDefs(more, q).map((d) => d.type)[0];
    // the server's type id alone: the drill's "text encode" gave the SDXL encoders first
    for (const q of ["CLIP Text Encode (Prompt)", "text encode", "clip text", "CLIP Text Encode"]) {
      expect(first(q), q).toBe("CLIPTextEncode");
    }
    text("CLIPTextEncode", "Encode Prompt", "conditioning", ["CLIP Text Encode (Prompt)", "CLIP Text Encode"]);
    expect(searchDefs(more, "CLIP Text Encode (Prompt)").map((d) => d.type)).toEqual(["CLIPTextEncode"]);
    expect(searchDefs(more, "clip text encode, (prompt)").map((d) => d.type)).toEqual(["CLIPTextEncode"]);
    for (const q of ["text encode", "clip text", "CLIP Text Encode"]) expect(first(q), q).toBe("CLIPTextEncode");
    // the whole phrase in one name before its words found apart, however much that node is used
    more.set("PromptEncodeLike", parseNodeSchema("PromptEncodeLike", {
      name: "PromptEncodeLike", display_name: "Encode Text", category: "clip", input: { required: {} }, output: ["CONDITIONING"] }));
    const words = searchDefs(more, "clip text").map((d) => d.type);
    expect(words.indexOf("CLIPTextEncodeSDXL")).toBeLessThan(words.indexOf("PromptEncodeLike"));
    expect(searchText(" CLIP  Text Encode (Prompt) [x], y ")).toBe("clip text encode prompt x y");
  });

  it("finds KSampler first for the habitual \"ksamp\" (its ComfyUI name, an alias now)", () => {
    const more = new Map(defs);
    const sampler = (type: string, name: string, aliases: string[]) => more.set(type, parseNodeSchema(type, {
      name: type, display_name: name, category: "sampling", search_aliases: aliases,
      input: { required: {} }, output: ["LATENT"] }));
    sampler("KSampler", "Sample", ["KSampler"]);
    sampler("KSamplerAdvanced", "Sample (Advanced)", ["KSampler (Advanced)"]);
    for (const q of ["ks", "ksa", "ksamp", "ksampler"]) expect(searchDefs(more, q)[0].type, q).toBe("KSampler");
    expect(searchDefs(more, "ksampler adv")[0].type).toBe("KSamplerAdvanced");
  });

  it("offers the common nodes first for a dropped IMAGE link, and among equal matches", () => {
    const more = new Map(defs);
    const image = (type: string, name: string, category: string) => more.set(type, parseNodeSchema(type, {
      display_name: name, category, input: { required: { images: ["IMAGE", {}] } }, output: ["IMAGE"] }));
    image("SaveImageWebsocket", "Save Image (Websocket)", "api node/image");
    image("ImageScale", "Upscale Image", "image/upscaling");
    image("ImageInvertX", "Invert Image (custom)", "aaa/custom");
    const fits = new Set(["SaveImageWebsocket", "SaveImage", "PreviewImage", "VAEEncode", "ImageScale", "ImageInvertX"]);
    const listed = searchDefs(more, "", fits).map((d) => d.type);
    expect(listed.slice(0, 4)).toEqual(["SaveImage", "PreviewImage", "VAEEncode", "ImageScale"]);
    expect(listed.indexOf("SaveImageWebsocket")).toBeGreaterThan(3);
    expect(searchDefs(more, "save", fits).map((d) => d.type)).toEqual(["SaveImage", "SaveImageWebsocket"]);
    const words = searchDefs(more, "image", fits).map((d) => d.type); // a word of the name: most used first
    expect(words.indexOf("SaveImage")).toBeLessThan(words.indexOf("PreviewImage"));
    expect(words.indexOf("PreviewImage")).toBeLessThan(words.indexOf("SaveImageWebsocket"));
  });

  it("ranks a match on the shown name before one on the hidden type id (\"latent\" → Empty Latent Image first)", () => {
    const more = new Map(defs);
    const add = (type: string, name: string, category: string) => more.set(type, parseNodeSchema(type, {
      display_name: name, category, input: { required: { samples: ["LATENT", {}] } }, output: ["LATENT"] }));
    add("LatentUpscaleBy", "Upscale Latent By", "latent");
    add("LatentFromBatch", "Latent From Batch", "latent/batch");
    add("ImageScale", "Upscale Image", "image/upscaling");
    add("ImageInvertX", "Xform", "image");
    const latent = searchDefs(more, "latent").map((d) => d.type);
    expect(latent[0]).toBe("LatentFromBatch"); // its shown name starts with the word
    expect(latent.indexOf("EmptyLatentImage")).toBeLessThan(latent.indexOf("LatentUpscaleBy"));
    const image = searchDefs(more, "image").map((d) => d.type);
    // a type id starting with "image" but no such word in the shown name comes after the names
    expect(image.indexOf("ImageInvertX")).toBeGreaterThan(image.indexOf("LoadImage"));
    expect(image.indexOf("SaveImage")).toBeLessThan(image.indexOf("ImageScale"));
  });

  it("lists nodes a dropped STRING fits only through a list of choices last, used or not", () => {
    const fits = nodesAcceptingType(defs, "STRING");
    const only = new Set(fits.map((c) => c.type));
    const last = new Set(fits.filter((c) => c.choice).map((c) => c.type));
    expect(last.has("KSampler")).toBe(true);
    const listed = searchDefs(defs, "", only, last).map((d) => d.type);
    expect(listed[0]).toBe("CLIPTextEncode");
    const firstChoice = listed.findIndex((t) => last.has(t));
    expect(listed.slice(firstChoice).every((t) => last.has(t))).toBe(true);
    expect(listed.indexOf("PrimitiveString")).toBeLessThan(listed.indexOf("KSampler"));
    // a query still finds them, after the nodes with a text input
    expect(searchDefs(defs, "sampler", only, last).map((d) => d.type)).toContain("KSampler");
  });
});
