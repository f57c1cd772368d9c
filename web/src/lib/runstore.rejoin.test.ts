import { describe, expect, it } from "vitest";
import { RunStore } from "./runstore";

function makeStore() {
  const flushes: (() => void)[] = [];
  const store = new RunStore((f) => flushes.push(f), () => undefined);
  // the prompts these tests run were queued from the open graph (kept across a reload: restoreGraphPrompts)
  store.restoreGraphPrompts(["train", "a", "b", "mine"]);
  const flush = () => { while (flushes.length) flushes.shift()!(); };
  return { store, flush };
}

const step = (node: string, value: number, loss = 1 / value) =>
  ({ type: "progress", data: { node, value, max: 50, loss } });

describe("RunStore after a reload during a run", () => {
  it("marks no resume on steps whose prompt the page does not know (promptId null)", () => {
    const { store, flush } = makeStore();
    for (let s = 13; s <= 20; s++) store.enqueue(step("4", s));
    flush();
    const run = store.getNode("4");
    expect(run.losses?.map((p) => p.step)).toEqual([13, 14, 15, 16, 17, 18, 19, 20]);
    expect(run.resumedAt).toBeUndefined();
  });

  it("takes back the running prompt from the executing the server replays, without a resume mark", () => {
    const { store, flush } = makeStore();
    // the page reloaded at step 12: no execution_start; the server replays the running node
    store.enqueue({ type: "executing", data: { node: "4", display_node: "4", prompt_id: "train" } });
    for (let s = 13; s <= 15; s++) store.enqueue(step("4", s));
    flush();
    const g = store.getGlobal();
    expect(g).toMatchObject({ promptId: "train", running: true, executing: "4", joinedMidway: true, startedAt: null });
    expect(store.getNode("4")).toMatchObject({ status: "executing", progress: { value: 15, max: 50 }, lossRun: "train" });
    expect(store.getNode("4").resumedAt).toBeUndefined();
  });

  it("adoptRunning (the server's queue: this tab's running prompt) sets the prompt once", () => {
    const { store, flush } = makeStore();
    store.adoptRunning("train");
    expect(store.getGlobal()).toMatchObject({ promptId: "train", running: true, joinedMidway: true });
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "train" } });
    store.enqueue(step("4", 13));
    flush();
    store.adoptRunning(undefined);
    store.adoptRunning("train");
    expect(store.getGlobal().promptId).toBe("train");
    expect(store.getNode("4").resumedAt).toBeUndefined();
    // a prompt this page saw start is not replaced by another answer
    store.enqueue({ type: "execution_start", data: { prompt_id: "next" } });
    flush();
    expect(store.getGlobal().joinedMidway).toBe(false);
    store.adoptRunning("other");
    expect(store.getGlobal().promptId).toBe("next");
  });

  it("keeps the curve over a reload (lossCurves / restoreLossCurves) and goes on without resume marks", () => {
    const before = makeStore();
    before.store.enqueue({ type: "execution_start", data: { prompt_id: "train" } });
    before.store.enqueue({ type: "executing", data: { node: "4", prompt_id: "train" } });
    for (let s = 1; s <= 12; s++) before.store.enqueue(step("4", s));
    before.flush();
    const kept = JSON.parse(JSON.stringify(before.store.lossCurves()));

    const { store, flush } = makeStore();
    store.restoreLossCurves(kept);
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "train" } });
    for (let s = 14; s <= 16; s++) store.enqueue(step("4", s)); // step 13 came while the page reloaded
    flush();
    const run = store.getNode("4");
    expect(run.losses?.map((p) => p.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16]);
    expect(run.resumedAt).toBeUndefined();
    store.restoreLossCurves({ "9": { losses: [{ step: "x" }] }, "8": null });
    expect(store.getNode("9").losses).toBeUndefined();
  });

  it("still marks a real resume: another known prompt going on with the kept curve", () => {
    const { store, flush } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "a" } });
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "a" } });
    for (let s = 1; s <= 20; s++) store.enqueue(step("4", s));
    store.enqueue({ type: "execution_interrupted", data: { prompt_id: "a" } });
    store.enqueue({ type: "execution_start", data: { prompt_id: "b" } });
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "b" } });
    for (let s = 21; s <= 25; s++) store.enqueue(step("4", s));
    flush();
    expect(store.getNode("4").resumedAt).toEqual([21]);
    expect(store.getNode("4").losses).toHaveLength(25);
  });
});

describe("RunStore.restoreResults newer (a prompt in flight at load finished)", () => {
  it("replaces an older result but not what ran in this page since", () => {
    const { store, flush } = makeStore();
    store.restoreResults([{ node: "9", output: { images: [{ filename: "old.png" }] }, promptId: "o" }], []);
    store.restoreResults([{ node: "9", output: { images: [{ filename: "newer.png" }] }, promptId: "n" }],
      [{ filename: "newer.png", node: "9", key: "k" }], { newer: true });
    expect(store.getNode("9").images).toEqual([{ filename: "newer.png" }]);
    expect(store.getGlobal().gallery[0].filename).toBe("newer.png");

    store.enqueue({ type: "execution_start", data: { prompt_id: "mine" } });
    store.enqueue({ type: "executing", data: { node: "9", prompt_id: "mine" } });
    store.enqueue({ type: "executed", data: { node: "9", output: { images: [{ filename: "mine.png" }] }, prompt_id: "mine" } });
    flush();
    store.restoreResults([{ node: "9", output: { images: [{ filename: "late.png" }] }, promptId: "l" }], [], { newer: true });
    expect(store.getNode("9").images).toEqual([{ filename: "mine.png" }]);
  });
});

describe("RunStore and a training resumed from a checkpoint it never saw", () => {
  it("marks the resume the server names (resumed_from) on the first step, and keeps the mark", () => {
    const { store, flush } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "train" } });
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "train" } });
    store.enqueue({ type: "progress", data: { node: "4", value: 61, max: 200, loss: 0.5, resumed_from: 60 } });
    for (let s = 62; s <= 64; s++) store.enqueue(step("4", s));
    flush();
    const run = store.getNode("4");
    expect(run.losses?.map((p) => p.step)).toEqual([61, 62, 63, 64]);
    expect(run.resumedAt).toEqual([61]);
  });
});
