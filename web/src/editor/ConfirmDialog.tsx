/**
 * A question before a destructive action (Clear, as ComfyUI asks "Clear workflow?" by
 * default). Modal: Tab stays in it, Escape or a click outside cancels, and the focus starts
 * on Cancel so that a stray Enter keeps the graph; it goes back to the opener when closed.
 * With `input` it asks for a name instead (Save of a graph never named, as ComfyUI's "Save
 * workflow as"): the focus starts in the field, and Enter confirms what it holds.
 */

import { useEffect, useRef, useState } from "react";
import { useEscape } from "./useEscape";
import { useFocusTrap } from "./useFocusTrap";
import { useReturnFocus } from "./useReturnFocus";

export function ConfirmDialog({ title, message, confirm, onConfirm, onCancel, input }: {
  title: string; message: string; confirm: string; onConfirm(value?: string): void; onCancel(): void;
  /** ask for a text: its label and the value it starts with */
  input?: { label: string; initial: string };
}) {
  const box = useRef<HTMLDivElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const field = useRef<HTMLInputElement>(null);
  const [value, setValue] = useState(input?.initial ?? "");
  useReturnFocus(true, box);
  useFocusTrap(box);
  useEscape(onCancel);
  useEffect(() => {
    if (field.current) field.current.select();
    else cancel.current?.focus();
  }, []);
  const done = () => onConfirm(input ? value : undefined);
  return (
    <div className="sf-examples-backdrop sf-confirm-backdrop" onMouseDown={(e) => e.target === e.currentTarget && onCancel()}>
      <div className="sf-confirm" role="alertdialog" aria-modal="true" aria-label={title} aria-describedby="sf-confirm-message"
        ref={box}>
        <strong>{title}</strong>
        <p id="sf-confirm-message">{message}</p>
        {input && (
          <input ref={field} type="text" aria-label={input.label} value={value} spellCheck={false}
            onChange={(e) => setValue(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter") {
                e.preventDefault();
                done();
              }
            }} />
        )}
        <div className="sf-confirm-buttons">
          <button type="button" ref={cancel} onClick={onCancel}>Cancel</button>
          <button type="button" className={input ? undefined : "sf-danger"} onClick={done}>{confirm}</button>
        </div>
      </div>
    </div>
  );
}
