import { describe, expect, it, vi } from "vitest";

vi.hoisted(() => {
  // api.ts reads the page's URL when it loads
  (globalThis as { window?: unknown }).window ??= { location: { search: "", pathname: "/", protocol: "http:", host: "x" } };
});

import type { HistoryEntry, QueueItem } from "../api";
import { RunStore } from "../lib/runstore";
import { promptOfGraph, restoreResults, watchInFlight } from "./restoreResults";

const graph = [{ id: "9", type: "SaveImage" }, { id: "3", type: "KSampler" }];
const prompt = { 3: { class_type: "KSampler", inputs: {} }, 9: { class_type: "SaveImage", inputs: {} } };

function entry(promptId: string, number: number, filename: string): HistoryEntry {
  return { promptId, number, prompt, outputs: { 9: { images: [{ filename, type: "output" }] } }, status: "success", messages: [], warnings: [] };
}

/** A fake server: a queue and a history the test changes. */
function server() {
  const s = {
    running: [] as QueueItem[], pending: [] as QueueItem[], history: [] as HistoryEntry[], queueReads: 0,
    api: {
      getQueue: async () => { s.queueReads++; return { running: [...s.running], pending: [...s.pending] }; },
      getHistory: async () => [...s.history].sort((a, b) => b.number - a.number),
    },
  };
  return s;
}

const item = (promptId: string, number: number, p: unknown = prompt): QueueItem =>
  ({ promptId, number, prompt: p, extra: { client_id: "closed-tab" } });

describe("results of a run in flight when the page loaded (the tab that queued it was closed)", () => {
  it("restores the older result at load, then the newer one when that prompt finishes", async () => {
    const s = server();
    s.history = [entry("p8", 8, "txt2img_00008_.png")];
    s.running = [item("p9", 9)];
    const store = new RunStore((f) => f(), () => undefined);
    const w = watchInFlight(store, () => graph, s.api, 0);
    await w.ready;
    await restoreResults(store, graph, s.api);
    expect(store.getNode("9").images?.[0].filename).toBe("txt2img_00008_.png");

    // still running: a queue change looks, nothing changes
    store.bumpQueue();
    await w.check();
    expect(store.getNode("9").images?.[0].filename).toBe("txt2img_00008_.png");

    // it finishes: the status broadcast bumps the queue version, the watch restores it
    s.running = [];
    s.history = [entry("p9", 9, "txt2img_00009_.png"), ...s.history];
    const reads = s.queueReads;
    store.bumpQueue();
    await w.check();
    expect(s.queueReads).toBeGreaterThan(reads);
    expect(store.getNode("9").images?.[0].filename).toBe("txt2img_00009_.png");
    expect(store.getGlobal().gallery[0].filename).toBe("txt2img_00009_.png");

    // done watching: later queue changes read nothing
    const after = s.queueReads;
    store.bumpQueue();
    await w.check();
    expect(s.queueReads).toBe(after);
  });

  it("waits for a finished prompt's history entry, and ignores prompts of other graphs", async () => {
    const s = server();
    s.running = [item("p9", 9), item("other", 10, { 1: { class_type: "LoadImage", inputs: {} } })];
    const store = new RunStore((f) => f(), () => undefined);
    const w = watchInFlight(store, () => graph, s.api, 0);
    await w.ready;
    s.running = [];
    await w.check(); // gone from the queue, not in the history yet
    expect(store.getNode("9").images).toBeUndefined();
    s.history = [entry("p9", 9, "late.png")];
    await w.check();
    expect(store.getNode("9").images?.[0].filename).toBe("late.png");
  });

  it("watches nothing when none of the graph's prompts is queued; stop() ends a watch", async () => {
    const s = server();
    const store = new RunStore((f) => f(), () => undefined);
    const w = watchInFlight(store, () => graph, s.api, 0);
    await w.ready;
    expect(s.queueReads).toBe(1);
    s.running = [item("p9", 9)];
    const w2 = watchInFlight(store, () => graph, s.api, 0);
    await w2.ready;
    w2.stop();
    s.running = [];
    s.history = [entry("p9", 9, "x.png")];
    await w2.check();
    expect(store.getNode("9").images).toBeUndefined();
  });

  it("a reload puts back this tab's images in the gallery, never another client's", async () => {
    const s = server();
    const other = { ...entry("o1", 11, "someone_else.png"), extra: { client_id: "someone-else" } };
    const mine = { ...entry("m1", 10, "mine.png"), extra: { client_id: "this-tab" } };
    s.history = [other, mine];
    const store = new RunStore((f) => f(), () => undefined);
    await restoreResults(store, graph, s.api, undefined, "this-tab");
    expect(store.getGlobal().gallery.map((g) => g.filename)).toEqual(["mine.png"]);

    const fresh = new RunStore((f) => f(), () => undefined);
    await restoreResults(fresh, graph, s.api); // no client id known: no gallery to put back
    expect(fresh.getGlobal().gallery).toEqual([]);
  });

  it("promptOfGraph: a prompt with a node of the graph's id and type", () => {
    expect(promptOfGraph(prompt, graph)).toBe(true);
    expect(promptOfGraph({ 9: { class_type: "PreviewImage" } }, graph)).toBe(false);
    expect(promptOfGraph(undefined, graph)).toBe(false);
  });
});
