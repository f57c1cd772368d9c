/** Whether the mask editor is open: a module of its own, so the shortcuts can ask without
 * loading the editor (and its DOM code) where there is no DOM (unit tests). */

let open = false;

/** Whether the editor is open (the canvas's own shortcuts stand aside meanwhile). */
export function maskEditorOpen(): boolean {
  return open;
}

export function setMaskEditorOpen(value: boolean): void {
  open = value;
}
