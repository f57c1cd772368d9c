/**
 * Focus goes back to what opened a dialog or menu (a toolbar button, a node's help button)
 * when it closes, as a keyboard user expects: otherwise it falls to <body> and the user has
 * to Tab through the whole toolbar again. It is not moved when the user put it elsewhere
 * meanwhile (a click on the canvas that closed the dialog).
 */

/** What `returnFocus` needs of the document and of the element that had the focus. */
export type Focusable = { isConnected?: boolean; focus(options?: { preventScroll?: boolean }): void };
export type FocusDoc = { activeElement: unknown; body: unknown };

/** Put the focus back on `opener` if the focus is lost (on <body>, nowhere, or in `closed`, the dialog's box). */
export function returnFocus(opener: Focusable | null | undefined, doc: FocusDoc,
  closed?: { contains(node: unknown): boolean } | null): boolean {
  if (!opener || opener === doc.body || opener.isConnected === false) return false;
  const active = doc.activeElement as { isConnected?: boolean } | null;
  const lost = !active || active === doc.body || active.isConnected === false || !!closed?.contains(active);
  if (!lost) return false;
  opener.focus({ preventScroll: true });
  return true;
}
