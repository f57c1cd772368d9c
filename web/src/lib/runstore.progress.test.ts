import { describe, expect, it } from "vitest";
import { RunStore } from "./runstore";

describe("RunStore: the running prompt's progress (queue items)", () => {
  it("counts finished and cached nodes and records when the prompt started", () => {
    const store = new RunStore((f) => f(), () => undefined);
    store.claimPrompt("p"); // queued from the open graph (drawn on its nodes)
    const before = Date.now();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    expect(store.getGlobal().startedAt).toBeGreaterThanOrEqual(before);
    store.enqueue({ type: "execution_cached", data: { nodes: ["4", "6"], prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "5", prompt_id: "p" } });
    expect(store.getGlobal().nodesDone).toBe(2);
    store.enqueue({ type: "executing", data: { node: "3", prompt_id: "p" } });
    store.enqueue({ type: "progress", data: { node: "3", value: 4, max: 20 } });
    expect(store.getGlobal()).toMatchObject({ nodesDone: 3, executing: "3" });
    expect(store.getNode("3").progress).toEqual({ value: 4, max: 20 });
    store.enqueue({ type: "execution_success", data: { prompt_id: "p" } });
    expect(store.getGlobal().nodesDone).toBe(4);
    // the next prompt counts from zero
    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    expect(store.getGlobal()).toMatchObject({ nodesDone: 0, promptId: "q" });
  });
});
