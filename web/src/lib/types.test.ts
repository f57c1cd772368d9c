import { describe, expect, it } from "vitest";
import { checkConnection, type LinkRef, nodesAcceptingType, nodesProducingType, typesMatch } from "./types";
import { testDefs } from "./testdefs";

describe("typesMatch (same rules as engine/validation.py)", () => {
  it.each([
    ["MODEL", "MODEL", true],
    ["CLIP", "MODEL", false],
    ["*", "MODEL", true],
    ["IMAGE", "*", true],
    ["IMAGE", "IMAGE,MASK", true],
    ["IMAGE,MASK", "MASK", true],
    ["IMAGE,MASK", "LATENT", false],
    ["STRING", "COMBO", true],
    ["COMBO", "COMBO", true],
    ["INT", "COMBO", false],
    ["COMBO", "STRING", false],
    ["INT", "FLOAT", false],
  ])("%s → %s is %s", (out, inp, ok) => {
    expect(typesMatch(out, inp)).toBe(ok);
  });
});

describe("checkConnection", () => {
  const defs = testDefs();
  const types: Record<string, string> = {
    "1": "CheckpointLoaderSimple", "2": "CLIPTextEncode", "3": "KSampler", "4": "EmptyLatentImage",
    "5": "VAEDecode", "6": "SaveImage", "7": "PrimitiveInt", "8": "ImageOrMask", "9": "Unknown",
  };
  const view = (links: LinkRef[]) => ({ nodeType: (id: string) => types[id], links });

  it("accepts matching types", () => {
    expect(checkConnection(view([]), defs, { source: "1", slot: 0, target: "3", input: "model" }))
      .toEqual({ ok: true, replaces: null });
  });

  it("refuses a type mismatch with a reason", () => {
    const r = checkConnection(view([]), defs, { source: "1", slot: 1, target: "3", input: "model" });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(/type mismatch.*model \(MODEL\).*CLIP/);
  });

  it("names the nodes by the titles the canvas shows, else by their type's name", () => {
    const titles: Record<string, string> = { "2": "Positive Prompt" };
    const titled = { nodeType: (id: string) => types[id], nodeTitle: (id: string) => titles[id], links: [] };
    const r = checkConnection(titled, defs, { source: "2", slot: 0, target: "3", input: "latent_image" });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.reason).toContain("Positive Prompt's CONDITIONING output");
      expect(r.reason).toContain(`${defs.get("KSampler")!.displayName}.latent_image (LATENT)`);
    }
  });

  it("replaces the link already on an input (one link per input)", () => {
    const old = { source: "2", slot: 0, target: "3", input: "positive" };
    const r = checkConnection(view([old]), defs, { source: "2", slot: 0, target: "3", input: "negative" });
    expect(r).toEqual({ ok: true, replaces: null });
    const r2 = checkConnection(view([old]), defs, { ...old });
    expect(r2).toEqual({ ok: true, replaces: old });
  });

  it("lets a primitive feed a widget input of its type", () => {
    expect(checkConnection(view([]), defs, { source: "7", slot: 0, target: "3", input: "seed" }).ok).toBe(true);
    expect(checkConnection(view([]), defs, { source: "7", slot: 0, target: "3", input: "cfg" }).ok).toBe(false);
  });

  it("understands comma lists", () => {
    expect(checkConnection(view([]), defs, { source: "5", slot: 0, target: "8", input: "pixels" }).ok).toBe(true);
    expect(checkConnection(view([]), defs, { source: "8", slot: 0, target: "6", input: "images" }).ok).toBe(true);
    expect(checkConnection(view([]), defs, { source: "8", slot: 0, target: "3", input: "latent_image" }).ok).toBe(false);
  });

  it("refuses self links, cycles, unknown nodes, slots and inputs", () => {
    const reason = (l: LinkRef, links: LinkRef[] = []) => {
      const r = checkConnection(view(links), defs, l);
      return r.ok ? "ok" : r.reason;
    };
    expect(reason({ source: "8", slot: 0, target: "8", input: "pixels" })).toMatch(/itself/);
    expect(reason({ source: "8", slot: 0, target: "5", input: "samples" })).toMatch(/mismatch/);
    const chain = [{ source: "5", slot: 0, target: "8", input: "pixels" }];
    // 8 → (another ImageOrMask input) would not cycle, but 8 → 5 is LATENT anyway; build a real cycle:
    types["10"] = "ImageOrMask";
    const c2 = [...chain, { source: "8", slot: 0, target: "10", input: "pixels" }];
    expect(reason({ source: "10", slot: 0, target: "8", input: "pixels" }, c2)).toMatch(/cycle/);
    expect(reason({ source: "9", slot: 0, target: "3", input: "model" })).toMatch(/unknown node type/);
    expect(reason({ source: "1", slot: 7, target: "3", input: "model" })).toMatch(/no output 7/);
    expect(reason({ source: "1", slot: 0, target: "3", input: "nope" })).toMatch(/no input 'nope'/);
    expect(reason({ source: "1", slot: 0, target: "404", input: "model" })).toMatch(/not found/);
  });
});

describe("palette filters for a dragged link", () => {
  const defs = testDefs();
  it("offers nodes that accept an output type", () => {
    const types = nodesAcceptingType(defs, "LATENT").map((c) => `${c.type}.${c.input}`);
    expect(types).toContain("KSampler.latent_image");
    expect(types).toContain("VAEDecode.samples");
    expect(types).not.toContain("CLIPTextEncode.clip");
    // "*" inputs accept everything
    expect(types).toContain("ShowValue.value");
  });
  it("marks nodes a STRING reaches only through a list of choices", () => {
    const fits = new Map(nodesAcceptingType(defs, "STRING").map((c) => [c.type, c]));
    expect(fits.get("CLIPTextEncode")).toEqual({ type: "CLIPTextEncode", input: "text" });
    expect(fits.get("KSampler")?.choice).toBe(true); // sampler_name
    expect(fits.get("CheckpointLoaderSimple")?.choice).toBe(true); // ckpt_name
    // a COMBO output into a combo is no stretch
    expect(nodesAcceptingType(defs, "COMBO").find((c) => c.type === "KSampler")?.choice).toBeUndefined();
  });

  it("offers nodes that produce an input type", () => {
    const types = nodesProducingType(defs, "CLIP").map((c) => `${c.type}.${c.slot}`);
    expect(types).toEqual(expect.arrayContaining(["CheckpointLoaderSimple.1", "AnyOut.0"]));
    expect(types).not.toContain("KSampler.0");
  });
});
