/**
 * A modal dialog keeps the keyboard (WAI-ARIA's dialog pattern): Tab from its last control
 * goes to its first, Shift+Tab from its first to its last, and a Tab pressed while the focus
 * is outside it (a click on its backdrop) brings the focus back into it. Without this the
 * focus walked out of the Examples dialog onto the toolbar behind it, where Enter ran Clear.
 */

/** What can take the focus by Tab inside a dialog (visible and enabled ones only: see `tabbables`). */
export const TABBABLE = [
  "a[href]", "button:not(:disabled)", "input:not(:disabled):not([type=hidden])", "select:not(:disabled)",
  "textarea:not(:disabled)", "[tabindex]:not([tabindex='-1'])",
].join(", ");

/**
 * Where Tab (`shift`: Shift+Tab) moves the focus among a dialog's `items` (in tab order) from
 * `active`: the next or previous one, round from the last to the first and back; from outside
 * the dialog (`active` not among them) to the first (Shift+Tab: the last). Null: no item.
 */
export function trappedTab<T>(items: readonly T[], active: T | null | undefined, shift: boolean): T | null {
  if (!items.length) return null;
  const i = active == null ? -1 : items.indexOf(active);
  if (i < 0) return shift ? items[items.length - 1] : items[0];
  return items[(i + (shift ? -1 : 1) + items.length) % items.length];
}

/** The controls of `root` that Tab visits, in document order (hidden ones left out). */
export function tabbables(root: ParentNode): HTMLElement[] {
  return [...root.querySelectorAll<HTMLElement>(TABBABLE)].filter((el) => el.getClientRects().length > 0);
}

/** Handle a Tab keydown for the dialog `root`: the focus moves as `trappedTab` says; true if handled. */
export function trapTab(e: KeyboardEvent, root: HTMLElement | null): boolean {
  if (e.key !== "Tab" || !root || e.ctrlKey || e.altKey || e.metaKey) return false;
  const next = trappedTab(tabbables(root), document.activeElement as HTMLElement | null, e.shiftKey);
  e.preventDefault();
  (next ?? root).focus();
  return true;
}
