/**
 * A combo's value that is not among its choices, checked on the canvas (the choices are the
 * server's /object_info lists, so no other request is made): on a model combo it names a model
 * file the server does not have, on an ordinary combo it is no valid choice. Either is marked
 * on its widget as soon as a workflow opens, in the words the server refuses the prompt with
 * (engine/validation.py `check_constant`), and opening a workflow sums up its missing models.
 *
 * A model combo is, as in ComfyUI's front end (missingModelScan.ts), one whose value is a model
 * file name (.safetensors, .ckpt, ...), and also one the server documents as a listing of a
 * models folder ("A file in models/loras") or one of ComfyUI's model inputs by name (ckpt_name,
 * lora_name, ...): Steerflow's diffusers folders ("steerflow-shapes") have no extension.
 * Image lists (Load Image, Load Image (from Outputs)) and other lists of input/ or output/
 * files are left to the server: they change as files are uploaded and made, and the server
 * accepts files they do not list yet. So are inputs a DynamicCombo's options share (their
 * choices differ from option to option). Every message the canvas does make was checked
 * against the server's for every combo of /object_info.
 */

import type { Graph } from "./graph";
import { type Defs, type InputDef, nodeTitle } from "./schema";

/** ComfyUI's model file extensions (its front end's MODEL_FILE_EXTENSIONS). */
const MODEL_EXTENSIONS = [".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf"];

/** ComfyUI's model-picking inputs and the models folder each lists. */
const MODEL_INPUTS: Readonly<Record<string, string>> = {
  ckpt_name: "checkpoints", lora_name: "loras", vae_name: "vae", control_net_name: "controlnet",
  unet_name: "diffusion_models", clip_name: "text_encoders", clip_name1: "text_encoders",
  clip_name2: "text_encoders", clip_name3: "text_encoders", clip_name4: "text_encoders",
  style_model_name: "style_models", gligen_name: "gligen", hypernetwork_name: "hypernetworks",
  ipadapter_file: "ipadapter", photomaker_model_name: "photomaker", upscale_model_name: "upscale_models",
};

/** "A file or diffusers folder in models/checkpoints": the folder a combo lists. */
const FOLDER_IN_TOOLTIP = /\bmodels\/([\w.-]+(?:\/[\w.-]+)*)/;

/** Folders the server also looks in (as ComfyUI: text encoders in models/clip too, diffusion models in models/unet). */
const ALSO_LOOKED_IN: Readonly<Record<string, string[]>> = { text_encoders: ["clip"], diffusion_models: ["unet"] };

/** Folders of files that are not models (a checkpoint's yaml config): missing, but not counted as models. */
const NOT_MODELS = new Set(["configs"]);

export function isModelFileName(name: string): boolean {
  const lower = name.toLowerCase();
  return MODEL_EXTENSIONS.some((ext) => lower.endsWith(ext));
}

const FILE_NAME = /\.[a-z0-9]{2,5}$/i;
const IMAGE_NAME = /\.(png|jpe?g|webp|gif|bmp|tiff?|avif|mp4|webm|mov|wav|mp3|flac|ogg)$/i;

/** The models folder a combo lists ("checkpoints"), when the server or ComfyUI says so. */
export function modelFolder(input: InputDef): string | null {
  const tip = typeof input.options.tooltip === "string" ? FOLDER_IN_TOOLTIP.exec(input.options.tooltip) : null;
  if (tip) return tip[1].replace(/\/+$/, "");
  return MODEL_INPUTS[input.name] ?? null;
}

export type ComboCheck = {
  /**
   * `model`: names a model file the server lacks; `file`: another file of a models folder it
   * lacks (a config); `choice`: an ordinary combo's value that is none of its choices.
   */
  kind: "model" | "file" | "choice";
  /** The server's words for it (what the canvas shows after a refused prompt). */
  message: string;
};

/** Python's repr of a string, as the server quotes values and choices. */
export function pyRepr(s: string): string {
  const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
  const body = s.replace(/[\\\n\r\t]/g, (c) => ({ "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" })[c]!)
    .split(quote).join(`\\${quote}`);
  return `${quote}${body}${quote}`;
}

/** The server's "input 'x': 'v' is not one of [...] (looked in models/f/)". */
export function notInChoicesMessage(input: InputDef, value: string, folder: string | null): string {
  const choices = input.choices ?? [];
  const shown = choices.slice(0, 10).map(pyRepr).join(", ") + (choices.length > 10 ? " ..." : "");
  const folders = folder ? [folder, ...(ALSO_LOOKED_IN[folder] ?? [])].map((f) => `models/${f}/`) : [];
  return `input '${input.name}': ${pyRepr(value)} is not one of [${shown}]${folders.length ? ` (looked in ${folders.join(" and ")})` : ""}`;
}

/** A combo of files the server finds as they come (uploads, results, input/): its own check decides. */
function isFileList(input: InputDef, value: string): boolean {
  const tooltip = typeof input.options.tooltip === "string" ? input.options.tooltip : "";
  return !!input.options.upload || /\bfolder\b|\b(input|output|temp)\//i.test(tooltip)
    || IMAGE_NAME.test(value) || (input.choices ?? []).some((c) => IMAGE_NAME.test(c));
}

/**
 * What is wrong with a combo's value, or null: none when it is a choice, empty, or a value the
 * canvas cannot judge (an image list, a Custom Combo's own options, an input a DynamicCombo's
 * options share, whose choices differ from option to option).
 */
export function checkCombo(input: InputDef, value: unknown): ComboCheck | null {
  if (input.type !== "COMBO" || input.draw === "customCombo") return null;
  if (typeof value !== "string" || value === "") return null;
  const choices = input.choices ?? [];
  if (choices.includes(value)) return null;
  const folder = modelFolder(input);
  if (folder !== null) {
    const kind = NOT_MODELS.has(folder) && !isModelFileName(value) ? "file" : "model";
    return { kind, message: notInChoicesMessage(input, value, folder) };
  }
  if (input.parent || isFileList(input, value)) return null;
  if (isModelFileName(value)) return { kind: "model", message: notInChoicesMessage(input, value, null) };
  if (!choices.length && FILE_NAME.test(value)) return null;
  return { kind: "choice", message: notInChoicesMessage(input, value, null) };
}

export type MissingModel = { name: string; folder: string | null; nodes: { id: string; input: string }[] };

/**
 * The model files a graph names that the server does not have, one entry per name (with the
 * nodes naming it), in graph order. Muted and bypassed nodes do not count (they do not run),
 * nor do linked inputs (a link gives their value).
 */
export function missingModels(graph: Graph, defs: Defs): MissingModel[] {
  const linked = new Set(graph.links.map((l) => `${l.target}\u0000${l.input}`));
  const byName = new Map<string, MissingModel>();
  for (const node of graph.nodes) {
    if (node.mode === "muted" || node.mode === "bypass") continue;
    const def = defs.get(node.type);
    for (const input of def?.inputs ?? []) {
      if (!input.widget || linked.has(`${node.id}\u0000${input.name}`)) continue;
      const value = node.values[input.name];
      if (checkCombo(input, value)?.kind !== "model") continue;
      const name = value as string;
      const entry = byName.get(name) ?? { name, folder: modelFolder(input), nodes: [] };
      entry.nodes.push({ id: node.id, input: input.name });
      byName.set(name, entry);
    }
  }
  return [...byName.values()];
}

/**
 * "2 models this workflow names are missing: a.safetensors (Load Checkpoint #4), b (Load LoRA
 * #9, #12)"; null when none is.
 */
export function missingModelsText(missing: readonly MissingModel[], graph: Graph, defs: Defs, shown = 3): string | null {
  if (!missing.length) return null;
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const parts = missing.slice(0, shown).map((m) => {
    const titles = new Map<string, string[]>();
    for (const { id } of m.nodes) {
      const node = byId.get(id);
      const title = node ? nodeTitle(node, defs) : "node";
      titles.set(title, [...(titles.get(title) ?? []), `#${id}`]);
    }
    const where = [...titles].map(([t, ids]) => `${t} ${ids.join(", ")}`).join("; ");
    return `${m.name} (${where})`;
  });
  const n = missing.length;
  const more = n > shown ? `, and ${n - shown} more` : "";
  const head = n === 1 ? "1 model this workflow names is missing" : `${n} models this workflow names are missing`;
  return `${head}: ${parts.join(", ")}${more}`;
}
