import { describe, expect, it } from "vitest";
import { importComfyUi, isComfyUiWorkflow } from "./comfyui";
import { graphToPrompt } from "./graph";
import { loadWorkflowObject } from "./load";
import { comfyDefault, testDefs } from "./testdefs";

const defs = testDefs();

describe("ComfyUI UI-format import", () => {
  it("detects the format", () => {
    expect(isComfyUiWorkflow(comfyDefault())).toBe(true);
    expect(isComfyUiWorkflow({ format: "steerflow.workflow", nodes: [], links: [] })).toBe(false);
    expect(isComfyUiWorkflow({ "1": { class_type: "X", inputs: {} } })).toBe(false);
  });

  it("maps widgets_values in order, skipping control_after_generate", () => {
    const { graph, warnings } = importComfyUi(comfyDefault(), defs);
    expect(warnings).toEqual([]);
    const ks = graph.nodes.find((n) => n.id === "3")!;
    // the seed comes from the PrimitiveNode; the rest from widgets_values
    expect(ks.values).toEqual({ seed: 42, steps: 3, cfg: 8, sampler_name: "euler", scheduler: "normal", denoise: 1 });
    expect(ks.control).toEqual({ seed: "randomize" });
    expect(graph.nodes.find((n) => n.id === "5")!.values).toEqual({ width: 64, height: 64, batch_size: 1 });
    expect(graph.nodes.find((n) => n.id === "6")!.title).toBe("Positive");
    expect(graph.nodes.find((n) => n.id === "4")!.size).toEqual([315, 98]);
    expect(graph.nodes.map((n) => n.type)).not.toContain("Reroute");
    expect(graph.nodes.map((n) => n.type)).not.toContain("Note");
    expect(graph.viewport).toEqual({ x: 50, y: -20, zoom: 0.5 });
    expect(graph.groups).toHaveLength(1);
  });

  it("produces the same API prompt ComfyUI would", () => {
    const { graph } = importComfyUi(comfyDefault(), defs);
    const prompt = graphToPrompt(graph, defs);
    expect(prompt["3"].inputs).toEqual({
      model: ["4", 0], seed: 42, steps: 3, cfg: 8, sampler_name: "euler", scheduler: "normal",
      positive: ["6", 0], negative: ["7", 0], latent_image: ["5", 0], denoise: 1,
    });
    // the Reroute is resolved to the checkpoint's VAE
    expect(prompt["8"].inputs).toEqual({ samples: ["3", 0], vae: ["4", 2] });
    expect(prompt["7"].inputs).toEqual({ text: "text, watermark", clip: ["4", 1] });
    expect(prompt["9"].inputs).toEqual({ images: ["8", 0], filename_prefix: "ComfyUI" });
  });

  it("reads the object link format and reports unsupported nodes", () => {
    const wf = comfyDefault();
    const links = wf.links.map((l) => ({ id: l[0], origin_id: l[1], origin_slot: l[2], target_id: l[3], target_slot: l[4], type: l[5] }));
    wf.nodes.push({ id: 20, type: "UpscaleModelLoader", pos: [0, 900], size: [300, 60], mode: 4, widgets_values: ["x4.pth"] } as never);
    const { graph, warnings } = loadWorkflowObject({ ...wf, links }, defs);
    expect(graph.links).toHaveLength(9);
    expect(warnings.join("\n")).toMatch(/UpscaleModelLoader is not available/);
    expect(warnings.join("\n")).toMatch(/bypassed/);
  });

  it("accepts widgets_values given as an object", () => {
    const { graph } = importComfyUi({
      nodes: [{ id: 1, type: "EmptyLatentImage", pos: [0, 0], widgets_values: { width: 128, batch_size: 2 } }], links: [],
    }, defs);
    expect(graph.nodes[0].values).toEqual({ width: 128, height: 512, batch_size: 2 });
  });
});
