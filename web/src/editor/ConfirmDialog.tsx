/**
 * A question before a destructive action (Clear, as ComfyUI asks "Clear workflow?" by
 * default). Modal: Tab stays in it, Escape or a click outside cancels, and the focus starts
 * on Cancel so that a stray Enter keeps the graph; it goes back to the opener when closed.
 */

import { useEffect, useRef } from "react";
import { useEscape } from "./useEscape";
import { useFocusTrap } from "./useFocusTrap";
import { useReturnFocus } from "./useReturnFocus";

export function ConfirmDialog({ title, message, confirm, onConfirm, onCancel }: {
  title: string; message: string; confirm: string; onConfirm(): void; onCancel(): void;
}) {
  const box = useRef<HTMLDivElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  useReturnFocus(true, box);
  useFocusTrap(box);
  useEscape(onCancel);
  useEffect(() => cancel.current?.focus(), []);
  return (
    <div className="sf-examples-backdrop sf-confirm-backdrop" onMouseDown={(e) => e.target === e.currentTarget && onCancel()}>
      <div className="sf-confirm" role="alertdialog" aria-modal="true" aria-label={title} aria-describedby="sf-confirm-message"
        ref={box}>
        <strong>{title}</strong>
        <p id="sf-confirm-message">{message}</p>
        <div className="sf-confirm-buttons">
          <button type="button" ref={cancel} onClick={onCancel}>Cancel</button>
          <button type="button" className="sf-danger" onClick={onConfirm}>{confirm}</button>
        </div>
      </div>
    </div>
  );
}
