import { describe, expect, it } from "vitest";
import { graphToPromptFor, widgetDefs } from "./frontendwidgets.fixture";
import { comparePair, sliderPercent } from "./imagecompare";
import { RunStore } from "./runstore";
import { defaultValues } from "./schema";

const A = { filename: "compare_a_1_00001_.png", subfolder: "", type: "temp" };
const B = { filename: "compare_b_1_00001_.png", subfolder: "", type: "temp" };

describe("IMAGECOMPARE widget", () => {
  it("is a widget with no value: nothing saved or sent", () => {
    const def = widgetDefs().get("ImageCompare")!;
    expect(def.inputs.find((i) => i.name === "compare_view")).toMatchObject({ type: "IMAGECOMPARE", widget: true });
    expect(defaultValues(def)).toEqual({});
    expect(graphToPromptFor("ImageCompare", defaultValues(def)).n.inputs).toEqual({});
  });

  it("reads the node's UI output", () => {
    expect(comparePair({ a_images: [A], b_images: [B], images: [A, B] })).toEqual({ a: [A], b: [B] });
    expect(comparePair({ a_images: [], b_images: [B] })).toEqual({ a: [], b: [B] });
    expect(comparePair({ images: [A] })).toBeUndefined();
    expect(comparePair({ a_images: [{ nope: 1 }, A] })).toEqual({ a: [A], b: [] });
  });

  it("keeps the pair on the node after a run, and a new run's replaces it", () => {
    const flushes: (() => void)[] = [];
    const store = new RunStore((f) => flushes.push(f), () => undefined);
    store.claimPrompt("p"); // queued from the open graph (its outputs go on its nodes)
    const apply = (msg: { type: string; data: Record<string, unknown> }) => {
      store.enqueue(msg);
      while (flushes.length) flushes.shift()!();
    };
    apply({ type: "executed", data: { node: "9", prompt_id: "p", output: { a_images: [A], b_images: [B], images: [A, B] } } });
    expect(store.getNode("9").compare).toEqual({ a: [A], b: [B] });
    expect(store.getNode("9").images).toEqual([A, B]);
    apply({ type: "execution_start", data: { prompt_id: "q" } });
    expect(store.getNode("9").compare).toEqual({ a: [A], b: [B] });
    store.restoreResults([{ node: "8", output: { a_images: [B], b_images: [A] } as never, promptId: "p" }], []);
    expect(store.getNode("8").compare).toEqual({ a: [B], b: [A] });
  });

  it("puts the slider where the pointer is, within the image", () => {
    expect(sliderPercent(150, 100, 200)).toBe(25);
    expect(sliderPercent(0, 100, 200)).toBe(0);
    expect(sliderPercent(900, 100, 200)).toBe(100);
    expect(sliderPercent(5, 0, 0)).toBe(50);
  });
});
