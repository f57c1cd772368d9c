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
 * useQueue's queue() as it runs in the page: each prompt of a press reads the canvas (with the
 * values moved on that it does not show yet), posts (a network round trip of `postTicks`),
 * moves the seed on and writes it back to the canvas where it still shows a value from before
 * the move; the canvas shows that only after a later render (React state), so a read made
 * meanwhile still sees the old seed. `onPost(k)` runs as the k-th POST starts (the user typing).
 */
function page(seed: number, postTicks = 1, onPost: (k: number) => void = () => undefined) {
  let canvas = [sampler(seed)];
  const posted: number[] = [];
  const postedValues: Record<string, unknown>[] = [];
  let busy = false;
  const busyLog: boolean[] = [];
  const runner = new SerialRunner((b) => { busy = b; busyLog.push(b); });
  const carry = new ControlCarry();
  const queueNow = async (count = 1) => {
    for (let i = 0; i < count; i++) {
      const nodes = carry.apply(canvas); // currentGraph(), read again for each prompt
      posted.push(nodes[0].values.seed as number); // POST /prompt
      postedValues.push(nodes[0].values);
      onPost(posted.length);
      for (let t = 0; t < postTicks; t++) await tick();
      carry.record(nodes, advanceControls(nodes, [], defs));
      // setNodes(updater): the updater runs at the render a few ticks later
      setTimeout(() => setTimeout(() => {
        canvas = canvas.map((n) => {
          const values = carry.merge(n.id, n.values, n.control);
          return values === n.values ? n : { ...n, values };
        });
        carry.settle(canvas); // useQueue's effect after the render
      }), 0);
    }
  };
  const queue = (count = 1) => runner.run(() => queueNow(count));
  const edit = (values: Record<string, unknown>) => {
    canvas = canvas.map((n) => ({ ...n, values: { ...n.values, ...values } }));
    carry.settle(canvas);
  };
  /** Open a graph (loadGraph): its nodes as saved; useQueue clears the carry at its next read. */
  const open = (nodes: GraphNode[]) => {
    canvas = nodes;
    carry.settle(canvas); // the render of the opened graph
    carry.clear();
  };
  return {
    queue, posted, postedValues, busyLog, carry, open,
    get busy() { return busy; },
    get canvas() { return canvas; },
    edit(seed: number) { edit({ seed }); },
    editValues: edit,
  };
}

const settle = async () => { for (let i = 0; i < 6; i++) await tick(); };

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

describe("a widget edited while the prompts of a batch are posted (ComfyUI reads the graph for each)", () => {
  for (const postTicks of [1, 5]) { // the POST shorter / longer than a render
    it(`uses a seed typed during the 2nd of 5 posts from the 3rd on (POST ${postTicks} tick(s))`, async () => {
      const p = page(100, postTicks, (k) => { if (k === 2) p.edit(500); });
      await p.queue(5);
      await settle();
      expect(p.posted).toEqual([100, 101, 500, 501, 502]);
      expect(p.canvas[0].values.seed).toBe(503); // never overwritten with 102..105
    });
  }

  it("uses a seed typed during the last post for the next press", async () => {
    const p = page(100, 1, (k) => { if (k === 3) p.edit(500); });
    await p.queue(3);
    await settle();
    expect(p.canvas[0].values.seed).toBe(500); // the moved-on 103 did not overwrite it
    await p.queue(2);
    await settle();
    expect(p.posted).toEqual([100, 101, 102, 500, 501]);
    expect(p.canvas[0].values.seed).toBe(502);
  });

  it("uses a seed typed while a later press waits (batch 3, two presses, then a third)", async () => {
    const p = page(100, 2, (k) => { if (k === 5) p.edit(500); });
    await Promise.all([p.queue(3), p.queue(3), p.queue(3)]);
    await settle();
    expect(p.posted).toEqual([100, 101, 102, 103, 104, 500, 501, 502, 503]);
    expect(p.canvas[0].values.seed).toBe(504);
  });

  it("applies another field edited mid-batch to the following prompts", async () => {
    const p = page(1, 1, (k) => { if (k === 2) p.editValues({ steps: 7 }); });
    await p.queue(4);
    await settle();
    expect(p.postedValues.map((v) => v.steps)).toEqual([20, 20, 7, 7]);
    expect(p.posted).toEqual([1, 2, 3, 4]); // the seed keeps moving on
    expect(p.canvas[0].values).toEqual({ seed: 5, steps: 7 });
  });

  it("typing back a value the batch already used gives no duplicates (it is taken as not rendered yet)", async () => {
    const p = page(100, 1, (k) => { if (k === 3) p.edit(100); });
    await p.queue(5);
    await settle();
    expect(p.posted).toEqual([100, 101, 102, 103, 104]);
    expect(p.canvas[0].values.seed).toBe(105);
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

  it("merge writes the moved-on value only where the canvas shows one from before it, and changes nothing", () => {
    const carry = new ControlCarry();
    carry.record([sampler(100)], [sampler(101)]);
    carry.record([sampler(101)], [sampler(102)]);
    const control = { seed: "increment" };
    const stale = { seed: 100, steps: 20 };
    expect(carry.merge("3", stale, control)).toEqual({ seed: 102, steps: 20 });
    expect(stale.seed).toBe(100);
    const typed = { seed: 500, steps: 20 };
    expect(carry.merge("3", typed, control)).toBe(typed); // typed meanwhile: stays
    expect(carry.merge("3", { seed: 101 }, { seed: "fixed" })).toEqual({ seed: 101 }); // set to fixed since
    expect(carry.merge("4", stale, control)).toBe(stale); // another node
    expect(carry.apply([sampler(100)])[0].values.seed).toBe(102); // merge forgot nothing
  });
});

describe("what the canvas shows is what runs (the templates drill's D1)", () => {
  it("opening the same workflow again queues the seed it shows, not the one moved on before", async () => {
    const saved = () => [sampler(851616030078638, "randomize")];
    const p = page(851616030078638);
    p.open(saved());
    await p.queue();
    await settle();
    const moved = p.canvas[0].values.seed as number;
    expect(moved).not.toBe(851616030078638); // randomize moved it on, and the canvas shows it
    p.open(saved()); // the same file again: the canvas shows 851616030078638
    await p.queue();
    await settle();
    expect(p.posted).toEqual([851616030078638, 851616030078638]);
  });

  it("another workflow sharing the node id and the seed queues its own seed", async () => {
    const p = page(100);
    await p.queue();
    await settle();
    expect(p.canvas[0].values.seed).toBe(101);
    p.open([{ ...sampler(100), values: { seed: 100, steps: 30 } }]);
    await p.queue(2);
    await settle();
    expect(p.posted).toEqual([100, 100, 101]);
  });

  it("a seed typed back to the one already used, once the canvas showed the move, runs as typed", async () => {
    const p = page(100);
    await p.queue();
    await settle();
    expect(p.canvas[0].values.seed).toBe(101);
    expect(p.carry.size).toBe(0); // the render showed it: nothing carried
    p.edit(100);
    await p.queue();
    await settle();
    expect(p.posted).toEqual([100, 100]);
  });

  it("the batch behaviour stays: a fast press after an open moves on from the opened seed", async () => {
    const p = page(100);
    await p.queue(3);
    p.open([sampler(7)]);
    await Promise.all([p.queue(), p.queue(), p.queue()]);
    await settle();
    expect(p.posted).toEqual([100, 101, 102, 7, 8, 9]);
    expect(p.canvas[0].values.seed).toBe(10);
  });
});

describe("ControlCarry.settle and clear", () => {
  it("keeps a carry while the canvas shows the value from before the move, drops it once shown", () => {
    const carry = new ControlCarry();
    carry.record([sampler(5)], [sampler(6)]);
    carry.settle([sampler(5)]); // a render from before the move
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(6);
    carry.record([sampler(6)], [sampler(7)]);
    carry.settle([sampler(7)]); // shown
    expect(carry.size).toBe(0);
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(5);
  });

  it("drops a carry the user overrode or whose node is gone, and clear forgets all", () => {
    const carry = new ControlCarry();
    carry.record([sampler(5)], [sampler(6)]);
    carry.settle([sampler(500)]);
    expect(carry.size).toBe(0);
    carry.record([sampler(5)], [sampler(6)]);
    carry.settle([]);
    expect(carry.size).toBe(0);
    carry.record([sampler(5)], [sampler(6)]);
    carry.clear();
    expect(carry.apply([sampler(5)])[0].values.seed).toBe(5);
  });
});
