import { describe, expect, it } from "vitest";
import { type Graph, promptToGraph } from "./graph";
import { checkCombo, isModelFileName, missingModels, missingModelsText, modelFolder, pyRepr } from "./missingmodels";
import { type ObjectInfo, parseObjectInfo } from "./schema";

const SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde",
  "dpmpp_sde", "dpmpp_2m_sde_gpu", "dpmpp_sde_gpu"];

// the server's schemas as /object_info gives them (nodes/*.py), trimmed to the inputs used here
const info: ObjectInfo = {
  CheckpointLoaderSimple: {
    display_name: "Load Checkpoint", output: ["MODEL", "CLIP", "VAE"],
    input: { required: {
      ckpt_name: [["steerflow-shapes", "steerflow-tiny.safetensors"], { tooltip: "A file or diffusers folder in models/checkpoints" }],
      weight_dtype: [["default", "fp32"], { default: "default" }],
    } },
  },
  LoraLoader: {
    display_name: "Load LoRA", output: ["MODEL", "CLIP"],
    input: { required: {
      model: ["MODEL", {}], clip: ["CLIP", {}],
      lora_name: [["night.safetensors"], { tooltip: "A file in models/loras" }],
      strength_model: ["FLOAT", { default: 1 }],
    } },
  },
  VAELoader: { display_name: "Load VAE", output: ["VAE"], input: { required: { vae_name: [[], { tooltip: "A file or diffusers folder in models/vae" }] } } },
  DualCLIPLoader: { display_name: "DualCLIPLoader", output: ["CLIP"], input: { required: { clip_name1: [["clip_l.safetensors"], {}] } } },
  CheckpointLoader: {
    display_name: "Load Checkpoint With Config", output: ["MODEL", "CLIP", "VAE"],
    input: { required: { config_name: [["v1-inference.yaml"], { tooltip: "An LDM yaml config in models/configs" }] } },
  },
  CustomLoader: { display_name: "Custom Loader", output: ["MODEL"], input: { required: { weights: [["a.safetensors"], {}] } } },
  KSampler: {
    display_name: "KSampler", output: ["LATENT"],
    input: { required: { sampler_name: [SAMPLERS, {}], scheduler: [["normal", "karras"], { default: "normal" }] } },
  },
  LoadImage: {
    display_name: "Load Image", output: ["IMAGE", "MASK"],
    input: { required: { image: [["cat.png"], { upload: "image", image_upload: true }] } },
  },
  LoadImageOutput: {
    display_name: "Load Image (from Outputs)", output: ["IMAGE", "MASK"],
    input: { required: { image: [[], { tooltip: "An image in the output folder: 'x.png [output]'" }] } },
  },
  LoadImageMask: {
    display_name: "Load Image Mask", output: ["MASK"],
    input: { required: { image: [["cat.png"], { upload: "image" }], channel: [["alpha", "red"], {}] } },
  },
};
const defs = parseObjectInfo(info);
const inputOf = (type: string, name: string) => defs.get(type)!.inputs.find((i) => i.name === name)!;

describe("which combos name model files", () => {
  it("knows a model file by its extension, as ComfyUI's front end does", () => {
    expect(isModelFileName("sd_xl_base_1.0.safetensors")).toBe(true);
    expect(isModelFileName("v1-5.CKPT")).toBe(true);
    expect(isModelFileName("euler")).toBe(false);
    expect(isModelFileName("cat.png")).toBe(false);
  });

  it("reads the models folder from the server's tooltip, else from ComfyUI's input names", () => {
    expect(modelFolder(inputOf("CheckpointLoaderSimple", "ckpt_name"))).toBe("checkpoints");
    expect(modelFolder(inputOf("LoraLoader", "lora_name"))).toBe("loras");
    expect(modelFolder(inputOf("VAELoader", "vae_name"))).toBe("vae");
    expect(modelFolder({ ...inputOf("VAELoader", "vae_name"), options: {} })).toBe("vae"); // by name
    expect(modelFolder(inputOf("KSampler", "sampler_name"))).toBeNull();
  });
});

describe("checkCombo: a value that is not among a combo's choices", () => {
  it("is a missing model on a model combo, in the server's words", () => {
    expect(checkCombo(inputOf("CheckpointLoaderSimple", "ckpt_name"), "sd_xl_base_1.0.safetensors")).toEqual({
      kind: "model",
      // engine/validation.py check_constant, as the canvas shows it after a refused prompt
      message: "input 'ckpt_name': 'sd_xl_base_1.0.safetensors' is not one of ['steerflow-shapes', "
        + "'steerflow-tiny.safetensors'] (looked in models/checkpoints/)",
    });
    // a diffusers folder has no extension: the folder the combo lists says it is a model
    expect(checkCombo(inputOf("CheckpointLoaderSimple", "ckpt_name"), "my-diffusers-model")?.kind).toBe("model");
    expect(checkCombo(inputOf("VAELoader", "vae_name"), "vae-ft-mse.safetensors")?.message)
      .toBe("input 'vae_name': 'vae-ft-mse.safetensors' is not one of [] (looked in models/vae/)");
    // text encoders are looked for in models/clip as well (the server says both)
    expect(checkCombo(inputOf("DualCLIPLoader", "clip_name1"), "t5xxl.safetensors")?.message).toBe("input 'clip_name1': "
      + "'t5xxl.safetensors' is not one of ['clip_l.safetensors'] (looked in models/text_encoders/ and models/clip/)");
    // a missing config is a missing file, but no model
    expect(checkCombo(inputOf("CheckpointLoader", "config_name"), "v2-inference.yaml")?.kind).toBe("file");
    // a model file in a combo the canvas knows nothing else about
    expect(checkCombo(inputOf("CustomLoader", "weights"), "b.safetensors"))
      .toEqual({ kind: "model", message: "input 'weights': 'b.safetensors' is not one of ['a.safetensors']" });
  });

  it("is an invalid choice, not a missing model, on an ordinary combo", () => {
    const check = checkCombo(inputOf("KSampler", "sampler_name"), "euler_fast");
    expect(check?.kind).toBe("choice");
    // the server shows ten choices, then " ..."
    expect(check?.message).toBe("input 'sampler_name': 'euler_fast' is not one of ['euler', 'euler_ancestral', 'heun', "
      + "'dpm_2', 'dpm_2_ancestral', 'lms', 'dpmpp_2m', 'dpmpp_2m_sde', 'dpmpp_sde', 'dpmpp_2m_sde_gpu' ...]");
    expect(checkCombo(inputOf("CheckpointLoaderSimple", "weight_dtype"), "fp8")?.kind).toBe("choice");
    expect(checkCombo(inputOf("LoadImageMask", "channel"), "alpha")).toBeNull();
  });

  it("says nothing of a choice, an empty value, or an image the server may have since", () => {
    expect(checkCombo(inputOf("CheckpointLoaderSimple", "ckpt_name"), "steerflow-shapes")).toBeNull();
    expect(checkCombo(inputOf("CheckpointLoaderSimple", "ckpt_name"), "")).toBeNull();
    expect(checkCombo(inputOf("LoadImage", "image"), "uploaded-later.png")).toBeNull();
    expect(checkCombo(inputOf("LoadImage", "image"), "x.png [output]")).toBeNull();
    expect(checkCombo(inputOf("LoadImageOutput", "image"), "ComfyUI_00001_.png")).toBeNull();
    expect(checkCombo(inputOf("LoraLoader", "strength_model"), "night.safetensors")).toBeNull(); // not a combo
    // a file of input/ (Load Latent), listed when the page loaded: the server looks again
    const latent = { name: "latent", type: "COMBO", widget: true, required: true, choices: [],
      options: { tooltip: "A .latent file in input/" } };
    expect(checkCombo(latent, "x.latent")).toBeNull();
    // an input a DynamicCombo's options share: its choices on the canvas are one option's
    const shared = { ...inputOf("KSampler", "scheduler"), name: "format.bit_depth", parent: { name: "format", keys: ["png"] } };
    expect(checkCombo(shared, "32-bit float")).toBeNull();
  });

  it("quotes as Python does", () => {
    expect(pyRepr("a")).toBe("'a'");
    expect(pyRepr("it's")).toBe('"it\'s"');
    expect(pyRepr("a'b\"c")).toBe("'a\\'b\"c'");
    expect(pyRepr("C:\\models\\x")).toBe("'C:\\\\models\\\\x'");
  });
});

describe("missingModels: what opening a workflow sums up", () => {
  const graph: Graph = promptToGraph({
    4: { class_type: "CheckpointLoaderSimple", inputs: { ckpt_name: "sd_xl_base_1.0.safetensors", weight_dtype: "fp8" } },
    10: { class_type: "LoraLoader", inputs: { model: ["4", 0], clip: ["4", 1], lora_name: "detail.safetensors", strength_model: 1 } },
    11: { class_type: "LoraLoader", inputs: { model: ["10", 0], clip: ["10", 1], lora_name: "detail.safetensors", strength_model: 1 } },
    12: { class_type: "LoraLoader", inputs: { model: ["11", 0], clip: ["11", 1], lora_name: "night.safetensors", strength_model: 1 } },
    3: { class_type: "KSampler", inputs: { sampler_name: "euler_fast", scheduler: "normal" } },
    7: { class_type: "LoadImage", inputs: { image: "nope.png" } },
  }, defs).graph;

  it("lists each missing model once, with the nodes naming it; invalid choices and images are not models", () => {
    const missing = missingModels(graph, defs);
    expect(missing).toEqual([
      { name: "sd_xl_base_1.0.safetensors", folder: "checkpoints", nodes: [{ id: "4", input: "ckpt_name" }] },
      { name: "detail.safetensors", folder: "loras", nodes: [{ id: "10", input: "lora_name" }, { id: "11", input: "lora_name" }] },
    ]);
    expect(missingModelsText(missing, graph, defs)).toBe("2 models this workflow names are missing: "
      + "sd_xl_base_1.0.safetensors (Load Checkpoint #4), detail.safetensors (Load LoRA #10, #11)");
  });

  it("leaves out muted and bypassed nodes (they do not run) and linked inputs", () => {
    const muted: Graph = { ...graph, nodes: graph.nodes.map((n) => (n.id === "4" ? { ...n, mode: "muted" as const } : n)) };
    expect(missingModels(muted, defs).map((m) => m.name)).toEqual(["detail.safetensors"]);
    const linked: Graph = { ...graph, links: [...graph.links, { source: "3", slot: 0, target: "4", input: "ckpt_name" }] };
    expect(missingModels(linked, defs).map((m) => m.name)).toEqual(["detail.safetensors"]);
    expect(missingModelsText([], graph, defs)).toBeNull();
    expect(missingModelsText(missingModels(muted, defs), graph, defs))
      .toBe("1 model this workflow names is missing: detail.safetensors (Load LoRA #10, #11)");
  });
});
