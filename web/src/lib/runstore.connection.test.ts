import { describe, expect, it } from "vitest";
import { RunStore } from "./runstore";

function makeStore() {
  const flushes: (() => void)[] = [];
  const store = new RunStore((f) => flushes.push(f), () => undefined);
  // the prompts these tests run were queued from the open graph (so drawn on its nodes)
  for (const id of ["p45", "a", "b", "c"]) store.claimPrompt(id);
  return { store, flush: () => flushes.splice(0).forEach((f) => f()) };
}

function running(store: RunStore, flush: () => void, prompt = "p45") {
  store.setConnected(true);
  store.enqueue({ type: "execution_start", data: { prompt_id: prompt } });
  store.enqueue({ type: "executing", data: { node: "3", prompt_id: prompt } });
  store.enqueue({ type: "progress", data: { node: "3", value: 55, max: 300 } });
  flush();
}

describe("RunStore and a lost connection", () => {
  it("stops showing a run as running when the server goes away", () => {
    const { store, flush } = makeStore();
    running(store, flush);
    expect(store.getGlobal()).toMatchObject({ running: true, executing: "3" });
    store.setConnected(false);
    const g = store.getGlobal();
    expect(g).toMatchObject({ connected: false, running: false, executing: null, startedAt: null, lostPrompt: "p45" });
    expect(store.getNode("3").status).toBeUndefined(); // no running frame
    expect(store.getNode("3").progress).toBeUndefined();
  });

  it("after a reconnect, says the server re-queued the prompt and shows the queue as it is", () => {
    const { store, flush } = makeStore();
    running(store, flush);
    store.setConnected(false);
    store.setConnected(true);
    const what = store.resync({ running: [], pending: [{ promptId: "p45", number: 45 }], history: [] }, () => true);
    expect(what).toMatchObject({ kind: "requeued", number: 45 });
    expect(what?.text).toMatch(/re-queued prompt #45/);
    expect(store.getGlobal()).toMatchObject({ running: false, lostPrompt: null });
  });

  it("after a reconnect, a prompt the restarted server runs again is shown running", () => {
    const { store, flush } = makeStore();
    running(store, flush);
    store.setConnected(false);
    store.setConnected(true);
    const what = store.resync({ running: [{ promptId: "p45", number: 45 }], pending: [], history: [] }, (id) => id === "p45");
    expect(what).toMatchObject({ kind: "rerunning", number: 45 });
    expect(store.getGlobal()).toMatchObject({ running: true, promptId: "p45" });
    expect(store.getGlobal().startedAt).not.toBeNull();
  });

  it("after a reconnect, a prompt that finished or vanished is said so", () => {
    const { store, flush } = makeStore();
    running(store, flush);
    store.setConnected(false);
    expect(store.resync({ running: [], pending: [], history: [{ promptId: "p45", number: 45, status: "success" }] }, () => false))
      .toMatchObject({ kind: "finished" });
    running(store, flush, "p46");
    store.setConnected(false);
    expect(store.resync({ running: [], pending: [], history: [] }, () => false)).toMatchObject({ kind: "gone" });
    // nothing was running: nothing to say
    store.setConnected(false);
    store.setConnected(true);
    expect(store.resync({ running: [], pending: [], history: [] }, () => false)).toBeNull();
  });
});

describe("RunStore loss curve across a resume", () => {
  const train = (store: RunStore, prompt: string, from: number, to: number) => {
    store.enqueue({ type: "execution_start", data: { prompt_id: prompt } });
    store.enqueue({ type: "executing", data: { node: "21", prompt_id: prompt } });
    for (let s = from; s <= to; s++) store.enqueue({ type: "progress", data: { node: "21", value: s, max: 300, loss: 1 / s } });
  };

  it("keeps the curve's first part when the same training resumes from its checkpoint", () => {
    const { store, flush } = makeStore();
    train(store, "a", 1, 85);
    store.enqueue({ type: "execution_interrupted", data: { prompt_id: "a" } });
    flush();
    train(store, "b", 86, 120); // resumed: goes on from step 86
    flush();
    const run = store.getNode("21");
    expect(run.losses?.[0].step).toBe(1);
    expect(run.losses?.at(-1)?.step).toBe(120);
    expect(run.losses).toHaveLength(120);
    expect(run.resumedAt).toEqual([86]);
  });

  it("a resume from an earlier checkpoint replaces the steps done again; a run from step 1 starts a new curve", () => {
    const { store, flush } = makeStore();
    train(store, "a", 1, 85);
    flush();
    train(store, "b", 51, 60); // the checkpoint was at step 50
    flush();
    expect(store.getNode("21").losses?.map((p) => p.step)).toEqual([...Array(60).keys()].map((i) => i + 1));
    expect(store.getNode("21").resumedAt).toEqual([51]);
    train(store, "c", 1, 5);
    flush();
    expect(store.getNode("21").losses).toHaveLength(5);
    expect(store.getNode("21").resumedAt).toBeUndefined();
  });
});
