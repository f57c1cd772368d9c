/** The side panel's tabs and the keys that toggle them (Q, H: ComfyUI's sidebar toggles). */

export type SideTab = "queue" | "history" | "gallery";

/** A key's request: show `tab`, or hide the panel when it shows that tab already (a new `seq` each press). */
export type TabToggle = { tab: SideTab; seq: number };

/** The panel after a Q / H press: opened on `want`, or closed if it showed `want`. */
export function afterToggle(collapsed: boolean, tab: SideTab, want: SideTab): { collapsed: boolean; tab: SideTab } {
  if (collapsed) return { collapsed: false, tab: want };
  return tab === want ? { collapsed: true, tab } : { collapsed: false, tab: want };
}
