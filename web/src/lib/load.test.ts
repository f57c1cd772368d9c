import { describe, expect, it } from "vitest";
import { graphToPrompt } from "./graph";
import { type Converter, isComfyUiWorkflow, loadWorkflowObject, mergeWarnings } from "./load";
import { comfyDefault, testDefs } from "./testdefs";

const defs = testDefs();

describe("opening workflows", () => {
  it("detects ComfyUI's UI format", () => {
    expect(isComfyUiWorkflow(comfyDefault())).toBe(true);
    expect(isComfyUiWorkflow({ format: "steerflow.workflow", nodes: [], links: [] })).toBe(false);
    expect(isComfyUiWorkflow({ "1": { class_type: "X", inputs: {} } })).toBe(false);
  });

  it("sends the UI format to the server's converter and shows its warnings", async () => {
    const calls: unknown[] = [];
    const convert: Converter = async (wf) => {
      calls.push(wf);
      return {
        document: {
          format: "steerflow.workflow", version: 1,
          prompt: {
            "5": { class_type: "EmptyLatentImage", inputs: { width: 64, height: 64, batch_size: 1 } },
            "7": { class_type: "VAEDecode", inputs: { samples: ["5", 0] }, mode: "bypass" },
          },
          layout: { nodes: { "5": { pos: [1, 2], control: {} }, "7": { pos: [3, 4], title: "Decode" } },
            groups: [{ title: "g" }], viewport: { x: 1, y: 2, zoom: 0.5 } },
        },
        warnings: ["node type X is not available here (node 9)"],
      };
    };
    const loaded = await loadWorkflowObject(comfyDefault(), defs, convert);
    expect(calls).toEqual([comfyDefault()]);
    expect(loaded.kind).toBe("comfyui");
    expect(loaded.warnings).toEqual(["node type X is not available here (node 9)"]);
    const decode = loaded.graph.nodes.find((n) => n.id === "7")!;
    expect(decode.mode).toBe("bypass");
    expect(decode.title).toBe("Decode");
    expect(loaded.graph.viewport).toEqual({ x: 1, y: 2, zoom: 0.5 });
    expect(loaded.graph.groups).toEqual([{ title: "g" }]);
    // the mode goes back to the server with the prompt
    expect(graphToPrompt(loaded.graph, defs)["7"].mode).toBe("bypass");
    expect(graphToPrompt(loaded.graph, defs)["5"].mode).toBeUndefined();
  });

  it("reads other formats without the server", async () => {
    const convert: Converter = async () => {
      throw new Error("not called");
    };
    const api = { "1": { class_type: "PrimitiveInt", inputs: { value: 3 }, mode: 2 } };
    const loaded = await loadWorkflowObject(api, defs, convert);
    expect(loaded.kind).toBe("api");
    expect(loaded.graph.nodes[0].mode).toBe("muted"); // ComfyUI's number read as ours
  });
});

describe("a dropped ComfyUI file's warnings", () => {
  it("name an unknown node type once per node (the converter's and the client's check agree)", async () => {
    const convert: Converter = async () => ({
      document: {
        format: "steerflow.workflow", version: 1,
        prompt: {
          "12": { class_type: "SVD_img2vid_Conditioning", inputs: {} },
          "14": { class_type: "VideoLinearCFGGuidance", inputs: {} },
          "5": { class_type: "EmptyLatentImage", inputs: { width: 64, height: 64, batch_size: 1 } },
        },
        layout: { nodes: {} },
      },
      warnings: [
        "node type SVD_img2vid_Conditioning is not available here (node 12)",
        "node type VideoLinearCFGGuidance is not available here (node 14)",
      ],
    });
    const loaded = await loadWorkflowObject(comfyDefault(), defs, convert);
    expect(loaded.warnings).toEqual([
      "node type SVD_img2vid_Conditioning is not available here (node 12)",
      "node type VideoLinearCFGGuidance is not available here (node 14)",
    ]);
  });

  it("keep the client's warning for a node the converter did not name, and other warnings", () => {
    expect(mergeWarnings(
      ["node type A is not available here (node 1, 2)", "something else"],
      ["node 2: unknown node type A", "node 3: unknown node type B", "node 3: unknown node type B",
        "node 1 (A): unknown input 'x' dropped"],
    )).toEqual([
      "node type A is not available here (node 1, 2)", "something else", "node 3: unknown node type B",
      "node 1 (A): unknown input 'x' dropped",
    ]);
  });
});
