import { describe, expect, it } from "vitest";
import {
  chooseOption, editOption, newComboValues, normalizeCombo, optionSlots, removeOption,
  replaceCombo,
} from "./customcombo";
import { graphToPromptFor, widgetDefs } from "./frontendwidgets.fixture";
import { documentToGraph, graphToDocument, promptToGraph } from "./graph";
import { loadWorkflowObject } from "./load";
import { defaultValues } from "./schema";

describe("Custom Combo options", () => {
  it("starts as ComfyUI's: no options, one empty box, index 0", () => {
    expect(newComboValues()).toEqual({ choice: "", index: 0, option1: "" });
    expect(defaultValues(widgetDefs().get("CustomCombo")!)).toEqual({ choice: "", index: 0, option1: "" });
  });

  it("opens a new box when the last one is typed into, and chooses the first option", () => {
    let v = newComboValues();
    v = editOption(v, 0, "red");
    expect(v).toEqual({ choice: "red", index: 0, option1: "red", option2: "" });
    v = editOption(v, 1, "green");
    expect(v).toEqual({ choice: "red", index: 0, option1: "red", option2: "green", option3: "" });
    v = chooseOption(v, "green");
    expect(v).toMatchObject({ choice: "green", index: 1 });
  });

  it("closes the empty last box when the one before it is emptied", () => {
    let v = { choice: "a", index: 0, option1: "a", option2: "b", option3: "" };
    v = editOption(v, 1, "") as typeof v;
    expect(v).toEqual({ choice: "a", index: 0, option1: "a", option2: "" });
    // emptying the chosen option moves the choice to the first one left
    v = editOption({ choice: "b", option1: "a", option2: "b", option3: "" }, 1, "") as typeof v;
    expect(v).toEqual({ choice: "a", index: 0, option1: "a", option2: "" });
    // nothing left: no choice (and the index of the first box, empty like the choice, as ComfyUI)
    expect(editOption({ choice: "a", option1: "a", option2: "" }, 0, "")).toEqual({ choice: "", index: 0, option1: "" });
  });

  it("keeps a renamed choice chosen, and an emptied middle box in place (its index counts)", () => {
    expect(editOption({ choice: "b", option1: "a", option2: "b", option3: "" }, 1, "blue"))
      .toMatchObject({ choice: "blue", index: 1 });
    const v = editOption({ choice: "c", option1: "a", option2: "b", option3: "c", option4: "" }, 1, "");
    expect(v).toEqual({ choice: "c", index: 2, option1: "a", option2: "", option3: "c", option4: "" });
  });

  it("removes a box, the ones after it moving up", () => {
    const v = removeOption({ choice: "c", option1: "a", option2: "b", option3: "c", option4: "" }, 1);
    expect(v).toEqual({ choice: "c", index: 1, option1: "a", option2: "c", option3: "" });
    // the empty last box cannot be removed
    expect(removeOption(v, 2)).toEqual(v);
  });

  it("reads any numbering, keeps one empty last box, at most 100 boxes", () => {
    expect(optionSlots({ option3: "c", option1: "a" })).toEqual(["a", "c", ""]);
    expect(optionSlots({ option1: "a", option2: "", option3: "" })).toEqual(["a", ""]);
    const full = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`option${i + 1}`, `o${i}`]));
    expect(optionSlots(full)).toHaveLength(100);
    expect(optionSlots({ ...full, option101: "x" })).toHaveLength(100);
    const v = editOption({ ...full, option100: "" }, 99, "last");
    expect(Object.keys(v).filter((k) => k.startsWith("option"))).toHaveLength(100);
  });

  it("keeps a file's choice as it is until an edit", () => {
    expect(normalizeCombo({ choice: "zzz", option1: "a" })).toEqual({ choice: "zzz", index: -1, option1: "a", option2: "" });
    expect(replaceCombo({ choice: "x", option7: "y", other: 1 }, { choice: "a", index: 0, option1: "a" }))
      .toEqual({ other: 1, choice: "a", index: 0, option1: "a" });
  });
});

describe("Custom Combo in prompts and files", () => {
  const defs = widgetDefs();
  const values = { choice: "green", index: 1, option1: "red", option2: "green", option3: "" };

  it("sends choice, index and every box by name, as ComfyUI's front end", () => {
    expect(graphToPromptFor("CustomCombo", values).n.inputs).toEqual(values);
  });

  it("round-trips through our document (and an API prompt) without warnings", () => {
    const graph = { nodes: [{ id: "1", type: "CustomCombo", pos: [0, 0] as [number, number], values }], links: [], groups: [] };
    const doc = JSON.parse(JSON.stringify(graphToDocument(graph, defs)));
    const back = documentToGraph(doc, defs);
    expect(back.warnings).toEqual([]);
    expect(back.graph.nodes[0].values).toEqual(values);
    const api = promptToGraph({ 1: { class_type: "CustomCombo", inputs: values } }, defs);
    expect(api.warnings).toEqual([]);
    expect(api.graph.nodes[0].values).toEqual(values);
  });

  it("keeps the options of a ComfyUI workflow the server converted (choice, index, option1, ...)", async () => {
    const workflow = {
      nodes: [{ id: 7, type: "CustomCombo", pos: [0, 0], widgets_values: ["green", 1, "red", "green", ""],
        outputs: [{ name: "STRING", type: "STRING", links: [] }] }],
      links: [],
    };
    const converted = { format: "steerflow.workflow", version: 1,
      prompt: { 7: { class_type: "CustomCombo", inputs: { choice: "green", index: 1, option1: "red", option2: "green", option3: "" } } },
      layout: { nodes: { 7: { pos: [0, 0] } }, groups: [] }, extra: {} };
    const loaded = await loadWorkflowObject(workflow, defs, async () => ({ document: structuredClone(converted), warnings: [] }));
    expect(loaded.kind).toBe("comfyui");
    expect(loaded.graph.nodes[0].values).toEqual(values);
  });
});
