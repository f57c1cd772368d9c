/** The side panel's tabs and the keys that toggle them (Q, H: ComfyUI's sidebar toggles). */

export type SideTab = "queue" | "history" | "gallery" | "workflows";

/** A key's request: show `tab`, or hide the panel when it shows that tab already (a new `seq` each press). */
export type TabToggle = { tab: SideTab; seq: number };

/** The panel after a Q / H / W press: opened on `want`, or closed if it showed `want`. */
export function afterToggle(collapsed: boolean, tab: SideTab, want: SideTab): { collapsed: boolean; tab: SideTab } {
  if (collapsed) return { collapsed: false, tab: want };
  return tab === want ? { collapsed: true, tab } : { collapsed: false, tab: want };
}

/** The side panel's tabs, in their order. */
export const TABS: readonly SideTab[] = ["queue", "history", "gallery", "workflows"];

/**
 * The tab a key moves to in a tab list (WAI-ARIA's tabs pattern: ←/→ wrap around, Home and
 * End go to the ends), or null for any other key.
 */
export function tabStep<T>(tabs: readonly T[], current: T, key: string): T | null {
  const i = tabs.indexOf(current);
  const n = tabs.length;
  if (!n) return null;
  if (key === "ArrowRight") return tabs[(i + 1) % n];
  if (key === "ArrowLeft") return tabs[(i - 1 + n) % n];
  if (key === "Home") return tabs[0];
  if (key === "End") return tabs[n - 1];
  return null;
}
