import { describe, expect, it } from "vitest";
import type { SfNode } from "../canvas/flow";
import { clonedNode } from "./useAltDragClone";

const original = (): SfNode => ({
  id: "3", type: "sf", position: { x: 40, y: 60 }, selected: false, draggable: false, width: 320,
  measured: { width: 320, height: 180 },
  data: {
    type: "KSampler", title: "Main sampler", color: "#335", pinned: true, mode: "bypass",
    values: { seed: 42, steps: 7, sampler_name: "euler" }, control: { seed: "fixed" }, size: [320, 180],
  },
});

describe("Alt+drag's clone (ComfyUI's)", () => {
  it("is a new node at the original's place with its values, title, colour and size, selected", () => {
    const n = original();
    const c = clonedNode(n, "9");
    expect(c.id).toBe("9");
    expect(c.position).toEqual({ x: 40, y: 60 });
    expect(c.selected).toBe(true);
    expect(c.data.values).toEqual({ seed: 42, steps: 7, sampler_name: "euler" });
    expect(c.data.control).toEqual({ seed: "fixed" });
    expect([c.data.title, c.data.color, c.data.mode, c.width]).toEqual(["Main sampler", "#335", "bypass", 320]);
    expect(c.measured).toEqual({ width: 320, height: 180 });
  });

  it("shares nothing with the original: editing one leaves the other", () => {
    const n = original();
    const c = clonedNode(n, "9");
    (c.data.values as Record<string, unknown>).seed = 1;
    c.position.x = 500;
    expect(n.data.values.seed).toBe(42);
    expect(n.position.x).toBe(40);
  });

  it("is not pinned, so the drag can move it", () => {
    const c = clonedNode(original(), "9");
    expect(c.data.pinned).toBeUndefined();
    expect(c.draggable).toBeUndefined();
  });
});
