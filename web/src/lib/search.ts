/**
 * Palette search, as ComfyUI's: every word of the query must appear in the name, type id
 * or category, or in one of the node's search aliases ("SAG", "attend and excite", ComfyUI's
 * display name "CLIP Text Encode (Prompt)" of Encode Prompt), brackets and commas aside; the
 * better match comes first (the exact name, then a name starting with the query, a word of
 * the name starting with it, the name containing it, the words found apart), and among
 * equal matches the more used node — a small popularity prior, so dropping an IMAGE link
 * offers Save Image and Preview Image before Save Image (Websocket).
 */

import type { Defs, NodeDef } from "./schema";

/**
 * The nodes ComfyUI users reach for most, most used first (ComfyUI's node usage, as its
 * search box ranks by): a prior between equally good matches, not a filter.
 */
export const POPULAR: readonly string[] = [
  "KSampler", "CLIPTextEncode", "VAEDecode", "SaveImage", "CheckpointLoaderSimple", "EmptyLatentImage",
  "PreviewImage", "LoadImage", "VAEEncode", "LoraLoader", "ImageScale", "ImageScaleBy", "ImageUpscaleWithModel",
  "UpscaleModelLoader", "ControlNetApplyAdvanced", "ControlNetLoader", "KSamplerAdvanced", "VAELoader",
  "CLIPSetLastLayer", "LatentUpscaleBy", "LatentUpscale", "ConditioningCombine", "VAEEncodeForInpaint",
  "InpaintModelConditioning", "SetLatentNoiseMask", "ConditioningSetArea", "ConditioningZeroOut", "ImageBatch",
  "ImageCompositeMasked", "ImageToMask", "MaskToImage", "ImagePadForOutpaint", "ImageScaleToTotalPixels",
  "Canny", "CLIPVisionEncode", "CLIPVisionLoader", "ControlNetApply", "LoraLoaderModelOnly", "RepeatLatentBatch",
  "LatentFromBatch", "ImageInvert", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "Note",
];
const RANK = new Map(POPULAR.map((type, i) => [type, i]));

/** How much a node is used: higher first; 0 for a node not in the prior. */
export function popularity(type: string): number {
  const rank = RANK.get(type);
  return rank === undefined ? 0 : POPULAR.length - rank;
}

/**
 * Text as the search compares it: lower case, without the brackets and commas of ComfyUI's
 * display names ("CLIP Text Encode (Prompt)" is "clip text encode prompt"), single-spaced.
 */
export function searchText(text: string): string {
  return text.toLowerCase().replace(/[()[\],]/g, " ").replace(/\s+/g, " ").trim();
}

function matches(def: NodeDef, tokens: string[]): boolean {
  const hay = searchText(`${def.displayName} ${def.type} ${def.category}`);
  // an alias matches as a whole ("attend and excite"), or its words do
  const aliases = (def.searchAliases ?? []).map(searchText);
  return tokens.every((t) => hay.includes(t)) || aliases.some((a) => tokens.every((t) => a.includes(t)));
}

/**
 * How well `def` matches the (normalised) query `q`, best 0. An alias is a name of the node
 * (ComfyUI's display name of a renamed node, a technique's short name), so it ranks as the
 * shown name does. A query of several words that names the type id as words ("clip text"
 * for CLIPTextEncode) is a phrase match too: the whole phrase in one name ranks before its
 * words found apart, so "text encode" gives Encode Prompt with the SDXL encoders, and the
 * more used first. A single word matching only the hidden type id comes after the names.
 */
function score(def: NodeDef, q: string): number {
  const names = [searchText(def.displayName), ...(def.searchAliases ?? []).map(searchText)];
  const type = def.type.toLowerCase();
  // "clip text encode" names CLIPTextEncode (shown as "Encode Prompt") exactly
  const joined = q.replace(/[\s_-]+/g, "");
  const phrase = joined !== q; // several words (or an id with _ or -)
  if (names.includes(q) || type === q || type === joined) return 0;
  // the name the user sees before the hidden type id: "latent" → Empty Latent Image (a word of
  // its name) ranks with Upscale Latent By, not after it for its id LatentUpscaleBy
  if (names.some((n) => n.startsWith(q)) || (phrase && type.startsWith(joined))) return 1;
  if (names.some((n) => n.split(/[\s_/-]+/).some((w) => w.startsWith(q)))) return 2;
  if (type.startsWith(q)) return 3;
  if (names.some((n) => n.includes(q)) || (phrase && type.includes(joined))) return 4;
  if (type.includes(q)) return 5;
  return 6; // only word by word
}

/**
 * The nodes matching `query` (among `only`), best first. Without a query the list goes by
 * category — or, filtered to what fits a dropped link, most used first. Nodes in `last`
 * (a dropped link fits them only as a poor match, e.g. a STRING into a list of choices)
 * come after all the others, however much they are used.
 */
export function searchDefs(defs: Defs, query: string, only?: Set<string>, last?: Set<string>,
  first?: Set<string>): NodeDef[] {
  const q = searchText(query);
  const tokens = q.split(" ").filter(Boolean);
  const list = [...defs.values()].filter((d) => !d.deprecated && (!only || only.has(d.type)) && matches(d, tokens));
  const byUse = !!q || !!only;
  // `first`: for a link dropped from an input, the nodes that make its type from other
  // inputs (Empty Latent Image) before those that also take it (a sampler), as ComfyUI offers
  const tier = (d: NodeDef) => (last?.has(d.type) ? 2 : first && !first.has(d.type) ? 1 : 0);
  // ComfyUI's test and internal nodes after the others a match ranks alike
  const testing = (d: NodeDef) => (d.category.startsWith("_") ? 1 : 0);
  return list.sort((a, b) =>
    tier(a) - tier(b)
    || (q ? score(a, q) - score(b, q) : 0)
    || testing(a) - testing(b)
    || (byUse ? popularity(b.type) - popularity(a.type) : 0)
    || a.category.localeCompare(b.category) || a.displayName.localeCompare(b.displayName));
}
