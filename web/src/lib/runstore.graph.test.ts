import { describe, expect, it } from "vitest";
import { GRAPH_PROMPTS_MAX, RunStore } from "./runstore";

function makeStore() {
  const flushes: (() => void)[] = [];
  const revoked: string[] = [];
  const store = new RunStore((f) => flushes.push(f), (u) => revoked.push(u));
  const flush = () => { while (flushes.length) flushes.shift()!(); };
  return { store, flush, revoked };
}

const IMG = { filename: "txt2img_00002_.png", subfolder: "", type: "output" };

/** A txt2img prompt's whole run (Sample #3 with a preview, Save Image #9's output). */
function run(store: RunStore, prompt: string, flush: () => void, between?: () => void) {
  store.enqueue({ type: "execution_start", data: { prompt_id: prompt } });
  store.enqueue({ type: "execution_cached", data: { nodes: ["4"], prompt_id: prompt } });
  store.enqueue({ type: "executing", data: { node: "3", prompt_id: prompt } });
  store.enqueue({ type: "progress", data: { node: "3", value: 7, max: 60, prompt_id: prompt } });
  store.enqueuePreview(`blob:${prompt}`);
  flush();
  between?.();
  store.enqueue({ type: "executing", data: { node: "9", prompt_id: prompt } });
  store.enqueue({ type: "executed", data: { node: "9", prompt_id: prompt, output: { images: [IMG] } } });
  store.enqueue({ type: "execution_success", data: { prompt_id: prompt } });
  store.enqueue({ type: "executing", data: { node: null, prompt_id: prompt } });
  flush();
}

describe("RunStore: a prompt's run is drawn on the graph that queued it", () => {
  it("draws the open graph's prompt on its nodes", () => {
    const { store, flush } = makeStore();
    store.claimPrompt("t");
    run(store, "t", flush, () => {
      expect(store.getNode("3")).toMatchObject({ status: "executing", progress: { value: 7, max: 60 }, preview: "blob:t" });
      expect(store.getGlobal()).toMatchObject({ ofGraph: true, progress: { value: 7, max: 60 } });
    });
    expect(store.getNode("9")).toMatchObject({ status: "done", images: [IMG] });
    expect(store.getNode("4").status).toBe("cached");
  });

  it("leaves a graph opened while another graph's prompt runs as it is (node ids repeat)", () => {
    const { store, flush } = makeStore();
    store.claimPrompt("t"); // txt2img queued...
    run(store, "t", flush, () => {
      store.reset(); // ...then the PAG example opened while it runs
      expect(store.getGlobal().ofGraph).toBe(false);
    });
    for (const id of ["3", "4", "8", "9"]) expect(store.getNode(id)).toEqual({});
    const g = store.getGlobal();
    // the queue panel, the live preview, History and Last result still follow it
    expect(g.gallery.map((i) => [i.filename, i.promptId])).toEqual([[IMG.filename, "t"]]);
    expect(g).toMatchObject({ running: false, preview: "blob:t", nodesDone: 3 });
  });

  it("draws nothing of a prompt that was queued before the graph was opened and starts after", () => {
    const { store, flush, revoked } = makeStore();
    store.claimPrompt("old");
    store.reset(); // another graph opened while "old" waits in the queue
    run(store, "old", flush, () => {
      expect(store.getNode("3")).toEqual({});
      expect(store.getGlobal()).toMatchObject({ ofGraph: false, executing: "3", progress: { value: 7, max: 60 }, preview: "blob:old" });
    });
    expect(store.getNode("9")).toEqual({});
    expect(revoked).toEqual([]); // the side panel's preview stays until the next one
    // the new graph's own prompt after it is drawn again
    store.claimPrompt("new");
    run(store, "new", flush);
    expect(store.getNode("9")).toMatchObject({ status: "done", images: [IMG] });
    expect(store.getNode("3").preview).toBe("blob:new");
  });

  it("keeps the open graph's states when another graph's prompt starts", () => {
    const { store, flush } = makeStore();
    store.claimPrompt("mine");
    store.enqueue({ type: "execution_start", data: { prompt_id: "mine" } });
    store.enqueue({ type: "execution_error", data: { prompt_id: "mine", node_id: "5", node_type: "KSampler", exception_message: "boom" } });
    flush();
    store.enqueue({ type: "execution_start", data: { prompt_id: "other" } });
    store.enqueue({ type: "executing", data: { node: "5", prompt_id: "other" } });
    flush();
    expect(store.getNode("5")).toMatchObject({ status: "error", errors: [{ message: "boom" }] });
  });

  it("puts another graph's errors and warnings in the status bar only, saying whose they are", () => {
    const { store, flush } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "other" } });
    store.enqueue({ type: "node_warning", data: { prompt_id: "other", node: "8", message: "link the VAE" } });
    store.enqueue({ type: "execution_error", data: { prompt_id: "other", node_id: "3", node_type: "Sample", exception_type: "ExecutionBlocked", exception_message: "skipped" } });
    flush();
    expect(store.getNode("3")).toEqual({});
    expect(store.getGlobal().lastWarning).toBe("a prompt not queued from this graph: Sample #3: skipped");
    store.enqueue({ type: "execution_error", data: { prompt_id: "other", node_id: "3", node_type: "Sample", exception_type: "ValueError", exception_message: "bad" } });
    flush();
    expect(store.getNode("3")).toEqual({});
    expect(store.getGlobal()).toMatchObject({ running: false, lastError: "a prompt not queued from this graph: Sample #3: ValueError: bad" });
  });

  it("keeps a training curve off another graph", () => {
    const { store, flush } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "train" } });
    store.enqueue({ type: "executing", data: { node: "4", prompt_id: "train" } });
    store.enqueue({ type: "progress", data: { node: "4", value: 1, max: 9, loss: 0.5, prompt_id: "train" } });
    store.enqueuePreview("blob:sample");
    flush();
    expect(store.getNode("4")).toEqual({});
    expect(store.lossCurves()).toEqual({});
  });

  it("forgets a prompt the server refused (unclaimPrompt)", () => {
    const { store, flush } = makeStore();
    store.claimPrompt("r");
    store.unclaimPrompt("r");
    store.enqueue({ type: "execution_start", data: { prompt_id: "r" } });
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "r" } });
    flush();
    expect(store.getNode("3")).toEqual({});
  });

  it("keeps the graph's prompts across a reload (graphPromptIds / restoreGraphPrompts)", () => {
    const before = makeStore();
    before.store.claimPrompt("a");
    before.store.claimPrompt("b");
    const kept = JSON.parse(JSON.stringify(before.store.graphPromptIds()));
    expect(kept).toEqual(["a", "b"]);

    const { store, flush } = makeStore();
    // the server replays the running node to the reloaded page before the kept prompts are read
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "b" } });
    flush();
    expect(store.getGlobal()).toMatchObject({ promptId: "b", ofGraph: false });
    store.restoreGraphPrompts([...kept, 7, null]);
    expect(store.getGlobal().ofGraph).toBe(true);
    expect(store.graphPromptIds()).toEqual(["a", "b"]);
    store.enqueue({ type: "progress", data: { node: "3", value: 2, max: 20, prompt_id: "b" } });
    flush();
    expect(store.getNode("3").progress).toEqual({ value: 2, max: 20 });
    store.restoreGraphPrompts("junk");
    expect(store.graphPromptIds()).toEqual(["a", "b"]);
  });

  it("does not draw a reloaded page's earlier prompt it was not told was its graph's", () => {
    const { store, flush } = makeStore();
    store.adoptRunning("earlier");
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "earlier" } });
    store.enqueue({ type: "executed", data: { node: "3", prompt_id: "earlier", output: { images: [IMG] } } });
    flush();
    expect(store.getNode("3")).toEqual({});
    expect(store.getGlobal()).toMatchObject({ promptId: "earlier", joinedMidway: true, ofGraph: false });
  });

  it("remembers at most GRAPH_PROMPTS_MAX prompts, the newest", () => {
    const { store } = makeStore();
    for (let i = 0; i < GRAPH_PROMPTS_MAX + 5; i++) store.claimPrompt(`p${i}`);
    const ids = store.graphPromptIds();
    expect(ids).toHaveLength(GRAPH_PROMPTS_MAX);
    expect(ids[0]).toBe("p5");
    expect(ids.at(-1)).toBe(`p${GRAPH_PROMPTS_MAX + 4}`);
  });
});
