import { describe, expect, it } from "vitest";
import { advanceControls } from "./batch";
import type { GraphNode } from "./graph";
import { ControlCarry, SerialRunner } from "./queuechain";
import { testDefs } from "./testdefs";

const defs = testDefs();
const tick = () => new Promise((r) => setTimeout(r, 0));

function sampler(seed: number, mode: "fixed" | "increment" | "randomize" = "increment"): GraphNode {
  return { id: "3", type: "KSampler", pos: [0, 0], values: { seed, steps: 20 }, control: { seed: mode } };
}

/**
 * useQueue's queue() as it runs in the page: a press reads the canvas, posts (a network round
 * trip), moves the seed on and writes it back to the canvas, which shows it only after a later
 * render (React state), so a press made meanwhile still reads the old seed from the canvas.
 */
function page(seed: number) {
  let canvas = [sampler(seed)];
  const posted: unknown[] = [];
  let busy = false;
  const busyLog: boolean[] = [];
  const runner = new SerialRunner((b) => { busy = b; busyLog.push(b); });
  const carry = new ControlCarry();
  const queueNow = async (count = 1) => {
    let nodes = carry.apply(canvas);
    const read = nodes;
    try {
      for (let i = 0; i < count; i++) {
        await tick(); // POST /prompt
        posted.push(nodes[0].values.seed);
        nodes = advanceControls(nodes, [], defs);
      }
    } finally {
      carry.record(read, nodes);
      const moved = nodes;
      // the canvas shows the moved-on value a few ticks later (a render)
      setTimeout(() => setTimeout(() => {
        canvas = canvas.map((n) => (n.values.seed === moved[0].values.seed ? n
          : { ...n, values: { ...n.values, seed: moved[0].values.seed } }));
      }), 0);
    }
  };
  const queue = (count = 1) => runner.run(() => queueNow(count));
  return {
    queue, posted, busyLog,
    get busy() { return busy; },
    get canvas() { return canvas; },
    edit(seed: number) { canvas = canvas.map((n) => ({ ...n, values: { ...n.values, seed } })); },
  };
}

describe("queueing fast (Ctrl+Enter pressed 20 times while prompts post)", () => {
  it("gives every prompt its own seed and ends the widget at start + N", async () => {
    const p = page(100);
    const presses = Array.from({ length: 20 }, () => p.queue());
    expect(p.busy).toBe(true);
    await Promise.all(presses);
    await tick(); await tick(); await tick();
    expect(p.posted).toEqual(Array.from({ length: 20 }, (_, i) => 100 + i));
    expect(p.canvas[0].values.seed).toBe(120);
    expect(p.busy).toBe(false);
    expect(p.busyLog).toEqual([true, false]);
  });

  it("mixes presses and a batch count: 1 + 3 + 1 prompts, seeds 7..11", async () => {
    const p = page(7);
    await Promise.all([p.queue(1), p.queue(3), p.queue(1)]);
    await tick(); await tick(); await tick();
    expect(p.posted).toEqual([7, 8, 9, 10, 11]);
    expect(p.canvas[0].values.seed).toBe(12);
  });

  it("takes a seed the user typed between presses as it is", async () => {
    const p = page(100);
    await p.queue();
    p.edit(500); // typed before the canvas rendered 101
    await p.queue();
    await tick(); await tick(); await tick();
    expect(p.posted).toEqual([100, 500]);
  });
});

describe("SerialRunner", () => {
  it("runs tasks one at a time in order; a failing one does not stop the next", async () => {
    const order: string[] = [];
    const r = new SerialRunner();
    const a = r.run(async () => { order.push("a start"); await tick(); order.push("a end"); });
    const b = r.run(async () => { order.push("b"); throw new Error("rejected"); });
    const c = r.run(async () => { order.push("c"); return 3; });
    expect(r.size).toBe(3);
    await a;
    await expect(b).rejects.toThrow("rejected");
    expect(await c).toBe(3);
    expect(order).toEqual(["a start", "a end", "b", "c"]);
    expect(r.size).toBe(0);
  });
});

describe("ControlCarry", () => {
  it("hands the moved-on value on until the canvas shows it, and leaves fixed widgets alone", () => {
    const carry = new ControlCarry();
    const before = [sampler(5)];
    carry.record(before, [sampler(6)]);
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(6); // canvas not rendered yet
    carry.record([sampler(6)], [sampler(7)]);
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(7); // still not rendered: the newest
    expect(carry.apply([sampler(7)])[0].values.seed).toBe(7); // rendered: taken as it is
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(5); // and forgotten once shown
    const fixed = new ControlCarry();
    fixed.record([sampler(5, "fixed")], [sampler(6, "fixed")]);
    expect(fixed.apply([sampler(5, "fixed")])[0].values.seed).toBe(5);
  });
});
