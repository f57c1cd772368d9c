import { describe, expect, it } from "vitest";
import { RunStore } from "./runstore";

function makeStore() {
  const flushes: (() => void)[] = [];
  const revoked: string[] = [];
  const store = new RunStore((f) => flushes.push(f), (u) => revoked.push(u));
  // the prompts these tests run were queued from the open graph (so drawn on its nodes)
  for (const id of ["p", "q", "n"]) store.claimPrompt(id);
  const flush = () => { while (flushes.length) flushes.shift()!(); };
  return { store, flush, revoked };
}

describe("RunStore results that stay", () => {
  it("keeps a sampler's last preview after it finishes and lets it go when it runs again", () => {
    const { store, flush, revoked } = makeStore();
    store.enqueue({ type: "execution_start", data: { prompt_id: "p" } });
    store.enqueue({ type: "executing", data: { node: "3" } });
    store.enqueuePreview("blob:1");
    store.enqueuePreview("blob:2");
    store.enqueue({ type: "executing", data: { node: "8" } });
    store.enqueue({ type: "execution_success", data: { prompt_id: "p" } });
    flush();
    expect(store.getNode("3")).toMatchObject({ status: "done", preview: "blob:2" });
    expect(revoked).toEqual(["blob:1"]);

    store.enqueue({ type: "execution_start", data: { prompt_id: "q" } });
    flush();
    expect(store.getNode("3").preview).toBe("blob:2"); // a new run keeps it until the node runs
    store.enqueue({ type: "executing", data: { node: "3" } });
    store.enqueuePreview("blob:3");
    flush();
    expect(store.getNode("3").preview).toBe("blob:3");
    expect(revoked).toEqual(["blob:1", "blob:2"]);
  });

  it("restores past results without overwriting newer ones", () => {
    const { store, flush } = makeStore();
    store.enqueue({ type: "executed", data: { node: "9", output: { images: [{ filename: "new.png" }] }, prompt_id: "n" } });
    flush();
    store.restoreResults([
      { node: "9", output: { images: [{ filename: "old.png" }] }, promptId: "o" },
      { node: "5", output: { text: ["hi", 3] }, promptId: "o" },
    ], [{ filename: "old.png", node: "9", key: "k" }]);
    expect(store.getNode("9").images).toEqual([{ filename: "new.png" }]);
    expect(store.getNode("5").text).toEqual(["hi", "3"]);
    expect(store.getGlobal().gallery.map((g) => g.filename)).toEqual(["new.png"]); // this session's gallery stays
  });
});
