/**
 * Per-tab autosave. Each browser tab has its own id, kept in sessionStorage (which survives a
 * reload of that tab, and Ctrl+Shift+T, but not a new tab), and autosaves its graph into its
 * own localStorage slot, so reloading tab A brings back A's graph even if tab B saved later.
 *
 * - `steerflow.autosave.tab.<id>`: one tab's slot, `{ t, doc, fit }` (`doc` the document JSON).
 * - `steerflow.autosave.tabs`: the slots, `[{ id, t, name }]`, newest first, at most MAX_SLOTS
 *   (saving prunes the oldest other tabs' slots beyond that).
 * - `steerflow.autosave` / `steerflow.autosave.fit`: a copy of the most recently saved graph of
 *   any tab (what a new tab opens, and what older versions wrote); best effort.
 *
 * A tab that finds no slot of its own (a new tab) opens the newest slot, as before this change.
 * A browser that copies sessionStorage into a duplicated tab gives both tabs one id: a tab that
 * starts asks the others (BroadcastChannel) whether its id is in use, and takes a new one if so.
 * When storage is full, the oldest other tabs' slots are dropped to make room; if the graph still
 * does not fit, `save` reports it (the editor tells the user once).
 */

export const LATEST_KEY = "steerflow.autosave";
export const LATEST_FIT_KEY = "steerflow.autosave.fit";
export const INDEX_KEY = "steerflow.autosave.tabs";
export const SLOT_PREFIX = "steerflow.autosave.tab.";
export const TAB_ID_KEY = "steerflow.tabId";
/** How many tabs' slots are kept (the oldest beyond this are pruned when a tab saves). */
export const MAX_SLOTS = 8;

export type SlotInfo = { id: string; t: number; name: string };
export type Restored = { doc: string; fit: unknown; from: "tab" | "latest" | "legacy"; id?: string };
export type SaveResult = { ok: true; pruned: string[] } | { ok: false; error: string; pruned: string[] };

type Store = Pick<Storage, "getItem" | "setItem" | "removeItem">;

function newId(): string {
  return typeof crypto !== "undefined" && crypto.randomUUID
    ? crypto.randomUUID().slice(0, 8) + Date.now().toString(36)
    : Math.random().toString(36).slice(2) + Date.now().toString(36);
}

function isQuota(e: unknown): boolean {
  const err = e as { name?: string; code?: number };
  return err?.name === "QuotaExceededError" || err?.name === "NS_ERROR_DOM_QUOTA_REACHED" || err?.code === 22;
}

export class TabAutosave {
  id: string;

  constructor(private local: Store, private session: Store, private now: () => number = Date.now) {
    let id: string | null = null;
    try {
      id = session.getItem(TAB_ID_KEY);
    } catch {
      // no sessionStorage: a fresh id per page load
    }
    this.id = id || this.renew();
  }

  /** Take a new id (a duplicated tab shares its original's). Returns it. */
  renew(): string {
    this.id = newId();
    try {
      this.session.setItem(TAB_ID_KEY, this.id);
    } catch {
      // the id then lasts this page load only
    }
    return this.id;
  }

  index(): SlotInfo[] {
    try {
      const list = JSON.parse(this.local.getItem(INDEX_KEY) ?? "[]");
      if (!Array.isArray(list)) return [];
      return list.filter((s): s is SlotInfo => s && typeof s.id === "string" && typeof s.t === "number")
        .sort((a, b) => b.t - a.t);
    } catch {
      return [];
    }
  }

  private readSlot(id: string): { doc: string; fit: unknown } | null {
    try {
      const raw = this.local.getItem(SLOT_PREFIX + id);
      if (!raw) return null;
      const s = JSON.parse(raw);
      return typeof s?.doc === "string" ? { doc: s.doc, fit: s.fit ?? null } : null;
    } catch {
      return null;
    }
  }

  /** The graph this tab should open: its own slot, else the newest slot, else the old single autosave. */
  restore(): Restored | null {
    const own = this.readSlot(this.id);
    if (own) return { ...own, from: "tab", id: this.id };
    for (const s of this.index()) {
      const slot = this.readSlot(s.id);
      if (slot) return { ...slot, from: "latest", id: s.id };
    }
    try {
      const doc = this.local.getItem(LATEST_KEY);
      if (doc) {
        let fit: unknown = null;
        try {
          fit = JSON.parse(this.local.getItem(LATEST_FIT_KEY) ?? "null");
        } catch {
          fit = null;
        }
        return { doc, fit, from: "legacy" };
      }
    } catch {
      // unavailable storage: nothing to restore
    }
    return null;
  }

  /** Other tabs' kept graphs, newest first (to reopen one whose tab was closed). */
  others(): (SlotInfo & { doc: string })[] {
    return this.index().filter((s) => s.id !== this.id).flatMap((s) => {
      const slot = this.readSlot(s.id);
      return slot ? [{ ...s, doc: slot.doc }] : [];
    });
  }

  private writeIndex(list: SlotInfo[]): void {
    this.local.setItem(INDEX_KEY, JSON.stringify(list));
  }

  private drop(id: string): void {
    try {
      this.local.removeItem(SLOT_PREFIX + id);
    } catch {
      // nothing to do
    }
  }

  /**
   * Save this tab's graph (`doc`: the document's JSON text; `fit`: how its view was fitted, or null).
   * Its slot is written first; storage full drops the oldest other slots until it fits.
   */
  save(doc: string, fit: unknown, name = ""): SaveResult {
    const t = this.now();
    const pruned: string[] = [];
    let list = this.index().filter((s) => s.id !== this.id);
    // bounded: this tab plus the MAX_SLOTS - 1 newest others
    while (list.length > MAX_SLOTS - 1) {
      const old = list.pop() as SlotInfo;
      this.drop(old.id);
      pruned.push(old.id);
    }
    const slot = JSON.stringify({ t, doc, fit: fit ?? null });
    let error: string | null = null;
    for (;;) {
      try {
        this.local.setItem(SLOT_PREFIX + this.id, slot);
        error = null;
        break;
      } catch (e) {
        error = (e as Error)?.message || String(e);
        if (!isQuota(e) || !list.length) break;
        // storage full: the oldest other tab's graph makes room for this one's
        const old = list.pop() as SlotInfo;
        this.drop(old.id);
        pruned.push(old.id);
        // the latest copy is only a convenience: it goes before another tab's graph would
        try {
          this.local.removeItem(LATEST_KEY);
        } catch {
          // nothing to do
        }
      }
    }
    try {
      this.writeIndex(error ? list : [{ id: this.id, t, name }, ...list]);
    } catch {
      // the slots stay; the next save rewrites the index
    }
    if (error) return { ok: false, error, pruned };
    // the newest graph of any tab, for a new tab (and tests and tools that read the old key)
    try {
      this.local.setItem(LATEST_KEY, doc);
      if (fit) this.local.setItem(LATEST_FIT_KEY, JSON.stringify(fit));
      else this.local.removeItem(LATEST_FIT_KEY);
    } catch {
      try {
        this.local.removeItem(LATEST_KEY);
        this.local.removeItem(LATEST_FIT_KEY);
      } catch {
        // nothing to do
      }
    }
    return { ok: true, pruned };
  }

  /** Forget a slot that cannot be read (a broken document). */
  forget(id: string | undefined): void {
    if (id) this.drop(id);
    else {
      try {
        this.local.removeItem(LATEST_KEY);
      } catch {
        // nothing to do
      }
    }
  }
}

/** The channel message a starting tab sends ("hello") and a tab already using that id answers ("taken"). */
type TabMsg = { type: "hello" | "taken"; id: string; nonce: string };

/**
 * Ask the other tabs whether `tabs.id` is in use (a duplicated tab); if one answers, take a new
 * id and call `moved` (the caller saves its graph under it). Keeps answering for this tab.
 * Returns a function that stops listening.
 */
export function guardTabId(tabs: TabAutosave, moved: () => void,
  make: (name: string) => Pick<BroadcastChannel, "postMessage" | "close"> & { onmessage: ((ev: MessageEvent) => void) | null }
  = (name) => new BroadcastChannel(name)): () => void {
  let ch: ReturnType<typeof make>;
  try {
    ch = make("steerflow.tabs");
  } catch {
    return () => undefined;
  }
  const nonce = Math.random().toString(36).slice(2);
  ch.onmessage = (ev: MessageEvent) => {
    const m = ev.data as TabMsg;
    if (!m || m.nonce === nonce) return;
    if (m.type === "hello" && m.id === tabs.id) ch.postMessage({ type: "taken", id: m.id, nonce } satisfies TabMsg);
    else if (m.type === "taken" && m.id === tabs.id) {
      tabs.renew();
      moved();
    }
  };
  ch.postMessage({ type: "hello", id: tabs.id, nonce } satisfies TabMsg);
  return () => ch.close();
}
