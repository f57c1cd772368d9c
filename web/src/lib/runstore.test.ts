import { describe, expect, it } from "vitest";
import { addToGallery, GALLERY_MAX, type GalleryItem, LOSS_POINTS_MAX, parsePreviewFrame, RunStore } from "./runstore";

function makeStore() {
  const flushes: (() => void)[] = [];
  const revoked: string[] = [];
  const store = new RunStore((f) => flushes.push(f), (u) => revoked.push(u));
  // the prompts these tests run were queued from the open graph (so drawn on its nodes)
  for (const id of ["p", "q", "r"]) store.claimPrompt(id);
  let notified = 0;
  store.subscribe(() => notified++);
  return { store, flushes, revoked, notified: () => notified };
}

describe("RunStore", () => {
  it("batches messages into one notification per frame", () => {
    const { store, flushes, notified } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "p" } });
    for (let i = 1; i <= 20; i++) store.enqueue({ type: "progress", data: { node: "3", value: i, max: 20 } });
    expect(flushes).toHaveLength(1);
    expect(notified()).toBe(0);
    flushes[0]();
    expect(notified()).toBe(1);
    expect(store.getNode("3")).toEqual({ status: "executing", progress: { value: 20, max: 20 } });
    expect(store.getGlobal()).toMatchObject({ running: true, executing: "3", promptId: "p" });
  });

  it("keeps a node_warning for the status bar until the next prompt starts", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "node_warning", data: { prompt_id: "p", node: "8", message: "link the VAE" } });
    flushes.shift()!();
    expect(store.getGlobal().lastWarning).toBe("node 8: link the VAE");
    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    flushes.shift()!();
    expect(store.getGlobal().lastWarning).toBeNull();
  });

  it("keeps untouched nodes' records identical (no re-render)", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "executing", data: { node: "1" } });
    flushes.shift()!();
    const one = store.getNode("1");
    const other = store.getNode("2");
    store.enqueue({ type: "progress", data: { node: "5", value: 1, max: 2 } });
    flushes.shift()!();
    expect(store.getNode("1")).toBe(one);
    expect(store.getNode("2")).toBe(other);
  });

  it("follows a whole run: cached, executing, executed, success", () => {
    const { store, flushes } = makeStore();
    const run = [
      { type: "execution_start", data: { prompt_id: "p" } },
      { type: "execution_cached", data: { nodes: ["1", "2"], prompt_id: "p" } },
      { type: "executing", data: { node: "5", prompt_id: "p" } },
      { type: "progress", data: { node: "5", value: 1, max: 3, prompt_id: "p" } },
      { type: "executing", data: { node: "7", prompt_id: "p" } },
      { type: "executed", data: { node: "7", prompt_id: "p", output: { images: [{ filename: "a.png", subfolder: "", type: "output" }] } } },
      { type: "execution_success", data: { prompt_id: "p" } },
      { type: "executing", data: { node: null, prompt_id: "p" } },
    ];
    run.forEach((m) => store.enqueue(m));
    flushes.shift()!();
    expect(store.getNode("1").status).toBe("cached");
    expect(store.getNode("5")).toEqual({ status: "done", progress: undefined, preview: undefined });
    expect(store.getNode("7").images).toEqual([{ filename: "a.png", subfolder: "", type: "output" }]);
    expect(store.getGlobal()).toMatchObject({ running: false, executing: null });
    expect(store.getGlobal().gallery.map((g) => g.filename)).toEqual(["a.png"]);
  });

  it("puts execution errors on their node", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "4" } });
    store.enqueue({ type: "execution_error", data: {
      node_id: "4", node_type: "IntMath", exception_type: "ValueError", exception_message: "IntMath: modulo by zero",
      traceback: ["Traceback...\n", "ValueError\n"] } });
    flushes.shift()!();
    expect(store.getNode("4").errors).toEqual([{ message: "ValueError: IntMath: modulo by zero", kind: "execution_error", traceback: "Traceback...\nValueError\n" }]);
    expect(store.getGlobal().lastError).toMatch(/IntMath #4/);
    // A new run clears it
    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    flushes.shift()!();
    expect(store.getNode("4").errors).toBeUndefined();
  });

  it("notes a blocked node (ExecutionBlocked) without ending the run", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "p" } });
    store.enqueue({ type: "execution_error", data: {
      prompt_id: "p", node_id: "3", node_type: "IntMath", exception_type: "ExecutionBlocked",
      exception_message: "Execution Blocked: odd", traceback: [] } });
    flushes.shift()!();
    expect(store.getNode("3").errors).toEqual([{ message: "Execution Blocked: odd", kind: "execution_blocked" }]);
    expect(store.getNode("3").status).toBe("executing");
    expect(store.getGlobal()).toMatchObject({ running: true, executing: "3", lastError: null });
    expect(store.getGlobal().lastWarning).toMatch(/IntMath #3: Execution Blocked: odd/);
  });

  it("shows node_errors on nodes and inputs, and clears them", () => {
    const { store } = makeStore();
    store.setValidationErrors({
      "5": { class_type: "KSampler", errors: [{ type: "required_input_missing", message: "Required input is missing", details: "required input 'model' (MODEL) is missing", extra_info: { input_name: "model" } }] },
    });
    expect(store.getNode("5").errors).toEqual([{ message: "required input 'model' (MODEL) is missing", kind: "required_input_missing", input: "model" }]);
    store.clearErrors();
    expect(store.getNode("5").errors).toBeUndefined();
  });

  it("attaches previews to the executing node and revokes old ones", () => {
    const { store, flushes, revoked } = makeStore();
    store.enqueue({ type: "executing", data: { node: "5" } });
    store.enqueuePreview("blob:1");
    store.enqueuePreview("blob:2");
    flushes.shift()!();
    expect(store.getNode("5").preview).toBe("blob:2");
    expect(store.getGlobal().preview).toBe("blob:2");
    expect(revoked).toEqual(["blob:1"]);
  });

  it("builds a training node's loss curve from progress events", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "21" } });
    store.enqueue({ type: "progress", data: { node: "21", value: 1, max: 3, loss: 0.5 } });
    store.enqueue({ type: "progress", data: { node: "21", value: 2, max: 3, loss: 0.25 } });
    store.enqueue({ type: "progress", data: { node: "21", value: 3, max: 3, loss: "x" } }); // not a number
    store.enqueue({ type: "progress", data: { node: "3", value: 1, max: 20 } }); // a sampler: no loss
    flushes.shift()!();
    expect(store.getNode("21").losses).toEqual([{ step: 1, loss: 0.5 }, { step: 2, loss: 0.25 }]);
    expect(store.getNode("21").progress).toEqual({ value: 3, max: 3 });
    expect(store.getNode("3").losses).toBeUndefined();
  });

  it("keeps the last LOSS_POINTS_MAX losses", () => {
    const { store, flushes } = makeStore();
    store.enqueue({ type: "executing", data: { node: "21" } });
    const n = LOSS_POINTS_MAX + 7;
    for (let i = 1; i <= n; i++) store.enqueue({ type: "progress", data: { node: "21", value: i, max: n, loss: 1 / i } });
    flushes.shift()!();
    const losses = store.getNode("21").losses!;
    expect(losses).toHaveLength(LOSS_POINTS_MAX);
    expect(losses[0].step).toBe(8);
    expect(losses.at(-1)).toEqual({ step: n, loss: 1 / n });
  });

  it("keeps the curve and sample with the result until the node runs again", () => {
    const { store, flushes, revoked } = makeStore();
    const train = (prompt: string) => {
      store.enqueue({ type: "execution_start", data: { prompt_id: prompt } });
      store.enqueue({ type: "executing", data: { node: "21" } });
      store.enqueue({ type: "progress", data: { node: "21", value: 1, max: 2, loss: 0.9 } });
      store.enqueue({ type: "progress", data: { node: "21", value: 2, max: 2, loss: 0.8 } });
    };
    train("p");
    store.enqueuePreview("blob:s1"); // the sample after step 2
    store.enqueue({ type: "executing", data: { node: "3" } }); // a sampler after it
    store.enqueuePreview("blob:l1"); // its live latent previews
    store.enqueuePreview("blob:l2");
    store.enqueue({ type: "execution_success", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: null } });
    flushes.shift()!();
    const done = store.getNode("21");
    expect(done.status).toBe("done");
    expect(done.sample).toBe("blob:s1");
    expect(done.sampleStep).toBe(2);
    expect(done.preview).toBeUndefined();
    expect(done.losses).toHaveLength(2);
    expect(revoked).toEqual(["blob:l1"]); // the sample survives the previews after it

    // a next run where the training is cached keeps both
    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    store.enqueue({ type: "execution_cached", data: { nodes: ["21"] } });
    flushes.shift()!();
    expect(store.getNode("21")).toMatchObject({ status: "cached", sample: "blob:s1" });
    expect(store.getNode("21").losses).toHaveLength(2);

    // training again starts a fresh curve and lets the old sample go
    train("r");
    flushes.shift()!();
    expect(store.getNode("21").losses).toEqual([{ step: 1, loss: 0.9 }, { step: 2, loss: 0.8 }]);
    expect(store.getNode("21").sample).toBeUndefined();
    expect(revoked).toContain("blob:s1");
    store.enqueuePreview("blob:s2");
    store.enqueuePreview("blob:s3");
    flushes.shift()!();
    expect(store.getNode("21").sample).toBe("blob:s3");
    expect(revoked).toContain("blob:s2");
    expect(revoked).not.toContain("blob:s3");
  });

  it("parses binary preview frames", () => {
    const buf = new ArrayBuffer(8 + 3);
    const v = new DataView(buf);
    v.setUint32(0, 1);
    v.setUint32(4, 1);
    new Uint8Array(buf).set([0xff, 0xd8, 0xff], 8);
    const f = parsePreviewFrame(buf)!;
    expect(f.mime).toBe("image/jpeg");
    expect([...f.bytes]).toEqual([0xff, 0xd8, 0xff]);
    v.setUint32(0, 2);
    expect(parsePreviewFrame(buf)).toBeNull();
    expect(parsePreviewFrame(new ArrayBuffer(4))).toBeNull();
  });
});

describe("the gallery", () => {
  const item = (filename: string, promptId: string, extra: Partial<GalleryItem> = {}): GalleryItem =>
    ({ filename, subfolder: "", type: "output", node: "9", promptId, key: `${promptId}:${filename}`, ...extra });

  it("moves an image shown again to the front instead of adding a copy", () => {
    const gallery = [item("b.png", "p2"), item("a.png", "p1")];
    const out = addToGallery(gallery, [item("a.png", "p3")]);
    expect(out.map((g) => `${g.filename}@${g.promptId}`)).toEqual(["a.png@p3", "b.png@p2"]);
    expect(gallery).toHaveLength(2); // pure
  });

  it("tells images apart by file name, subfolder and type", () => {
    const gallery = [item("a.png", "p1")];
    const out = addToGallery(gallery, [item("a.png", "p2", { subfolder: "x" }), item("a.png", "p2", { type: "temp" })]);
    expect(out).toHaveLength(3);
    // a missing subfolder / type is "" / "output"
    expect(addToGallery(gallery, [{ filename: "a.png", node: "9", key: "k" }])).toHaveLength(1);
  });

  it("keeps at most GALLERY_MAX, and cached runs do not push real results out", () => {
    const { store, flushes } = makeStore();
    const run = (prompt: string, filename: string) => {
      store.enqueue({ type: "execution_start", data: { prompt_id: prompt } });
      store.enqueue({ type: "executed", data: { node: "9", prompt_id: prompt,
        output: { images: [{ filename, subfolder: "", type: "output" }] } } });
      flushes.shift()!();
    };
    for (let i = 0; i < 5; i++) run(`r${i}`, `real${i}.png`);
    for (let i = 0; i < 300; i++) run(`c${i}`, "same.png"); // a fully cached run reports its file again
    const gallery = store.getGlobal().gallery;
    expect(gallery.map((g) => g.filename)).toEqual(["same.png", "real4.png", "real3.png", "real2.png", "real1.png", "real0.png"]);
    expect(gallery[0].promptId).toBe("c299");
    expect(new Set(gallery.map((g) => g.key)).size).toBe(gallery.length);
    const many = Array.from({ length: GALLERY_MAX + 50 }, (_, i) => item(`${i}.png`, "p"));
    expect(addToGallery([], many)).toHaveLength(GALLERY_MAX);
  });
});

describe("an unreachable server", () => {
  it("clears its status-bar message when the connection comes back, and only that one", () => {
    const { store } = makeStore();
    store.setConnected(true);
    store.setConnected(false);
    store.setLastError("Cannot reach the server (Failed to fetch)", { offline: true });
    store.setConnected(true);
    expect(store.getGlobal().lastError).toBeNull();
    // a rejection stays across a reconnect
    store.setConnected(false);
    store.setLastError("Prompt rejected: 1 input needs attention");
    store.setConnected(true);
    expect(store.getGlobal().lastError).toBe("Prompt rejected: 1 input needs attention");
    // and an offline message replaced by another error before the reconnect: that one stays
    store.setConnected(false);
    store.setLastError("Cannot reach the server (Failed to fetch)", { offline: true });
    store.setLastError("Prompt rejected: x");
    store.setConnected(true);
    expect(store.getGlobal().lastError).toBe("Prompt rejected: x");
  });
});
