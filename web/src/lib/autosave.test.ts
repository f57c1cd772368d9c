import { describe, expect, it } from "vitest";
import { guardTabId, INDEX_KEY, LATEST_KEY, MAX_SLOTS, SLOT_PREFIX, TAB_ID_KEY, TabAutosave } from "./autosave";

/** A Storage with an optional size limit (characters), throwing QuotaExceededError past it. */
class MemStorage {
  m = new Map<string, string>();
  constructor(public limit = Infinity) {}
  getItem(k: string) { return this.m.get(k) ?? null; }
  removeItem(k: string) { this.m.delete(k); }
  setItem(k: string, v: string) {
    let size = 0;
    for (const [kk, vv] of this.m) if (kk !== k) size += kk.length + vv.length;
    if (size + k.length + v.length > this.limit) {
      const e = new Error("quota exceeded");
      e.name = "QuotaExceededError";
      throw e;
    }
    this.m.set(k, v);
  }
}

const doc = (name: string) => JSON.stringify({ format: "steerflow.workflow", extra: { name } });

describe("TabAutosave", () => {
  it("gives each tab its own graph: reloading tab A brings back A's graph, not B's", () => {
    const local = new MemStorage();
    const sessA = new MemStorage();
    const sessB = new MemStorage();
    let t = 0;
    const a = new TabAutosave(local, sessA, () => ++t);
    a.save(doc("A"), null, "A");
    const b = new TabAutosave(local, sessB, () => ++t); // a new tab: opens the newest graph (A's)
    expect(b.restore()).toMatchObject({ doc: doc("A"), from: "latest" });
    b.save(doc("B"), "readable", "B"); // B edits last
    // tab A reloads: same sessionStorage, so the same id and its own slot
    const a2 = new TabAutosave(local, sessA, () => ++t);
    expect(a2.id).toBe(a.id);
    expect(a2.restore()).toMatchObject({ doc: doc("A"), from: "tab" });
    const b2 = new TabAutosave(local, sessB, () => ++t);
    expect(b2.restore()).toMatchObject({ doc: doc("B"), fit: "readable", from: "tab" });
    // a new tab opens the most recently saved graph, as before
    expect(new TabAutosave(local, new MemStorage(), () => ++t).restore()).toMatchObject({ doc: doc("B") });
    // and the old single key still holds the newest graph
    expect(local.getItem(LATEST_KEY)).toBe(doc("B"));
    // A can see B's graph among the others (a closed tab's graph stays reachable)
    expect(a2.others().map((o) => o.name)).toEqual(["B"]);
  });

  it("reads the single autosave an older version wrote", () => {
    const local = new MemStorage();
    local.setItem(LATEST_KEY, doc("old"));
    local.setItem("steerflow.autosave.fit", JSON.stringify("readable"));
    expect(new TabAutosave(local, new MemStorage()).restore()).toEqual({ doc: doc("old"), fit: "readable", from: "legacy" });
  });

  it("keeps at most MAX_SLOTS tabs' graphs, pruning the oldest", () => {
    const local = new MemStorage();
    let t = 0;
    const tabs = Array.from({ length: MAX_SLOTS + 3 }, () => new TabAutosave(local, new MemStorage(), () => ++t));
    tabs.forEach((tab, i) => tab.save(doc(`t${i}`), null, `t${i}`));
    const kept = [...local.m.keys()].filter((k) => k.startsWith(SLOT_PREFIX));
    expect(kept).toHaveLength(MAX_SLOTS);
    expect(local.getItem(SLOT_PREFIX + tabs[0].id)).toBeNull(); // the oldest went
    expect(local.getItem(SLOT_PREFIX + tabs.at(-1)!.id)).not.toBeNull();
    expect(JSON.parse(local.getItem(INDEX_KEY)!)).toHaveLength(MAX_SLOTS);
  });

  it("makes room by dropping other tabs' graphs when storage is full, and says when it cannot", () => {
    const local = new MemStorage(2000);
    let t = 0;
    const other = new TabAutosave(local, new MemStorage(), () => ++t);
    expect(other.save("x".repeat(600), null, "other").ok).toBe(true);
    const me = new TabAutosave(local, new MemStorage(), () => ++t);
    const res = me.save("y".repeat(700), null, "me");
    expect(res.ok).toBe(true);
    expect(res.pruned).toEqual([other.id]); // the other tab's graph made room
    expect(me.restore()).toMatchObject({ doc: "y".repeat(700), from: "tab" });
    const tooBig = me.save("z".repeat(5000), null, "me");
    expect(tooBig.ok).toBe(false);
    // the last graph that fitted is still there
    expect(me.restore()).toMatchObject({ doc: "y".repeat(700) });
  });

  it("a duplicated tab (sessionStorage copied) takes a new id when another tab answers for it", () => {
    const local = new MemStorage();
    const sess = new MemStorage();
    const first = new TabAutosave(local, sess);
    const copy = new MemStorage();
    copy.setItem(TAB_ID_KEY, sess.getItem(TAB_ID_KEY)!);
    const dup = new TabAutosave(local, copy);
    expect(dup.id).toBe(first.id);
    type Ch = { onmessage: ((ev: MessageEvent) => void) | null; postMessage(m: unknown): void; close(): void };
    const chans: Ch[] = [];
    const make = (): Ch => {
      const ch: Ch = {
        onmessage: null,
        postMessage: (m) => chans.filter((c) => c !== ch).forEach((c) => c.onmessage?.({ data: m } as MessageEvent)),
        close: () => undefined,
      };
      chans.push(ch);
      return ch;
    };
    let moved = 0;
    guardTabId(first, () => { throw new Error("the first tab keeps its id"); }, make);
    guardTabId(dup, () => moved++, make);
    expect(moved).toBe(1);
    expect(dup.id).not.toBe(first.id);
    expect(copy.getItem(TAB_ID_KEY)).toBe(dup.id);
  });
});
