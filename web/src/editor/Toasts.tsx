/** Short messages in the corner: info fades after 4 s, warnings and errors after 9 s. */

import { useCallback, useRef, useState } from "react";

export type ToastKind = "info" | "warning" | "error";
/** A button on the toast (e.g. "Show" the nodes an error is about). */
export type ToastAction = { label: string; run(): void };
type Toast = { id: number; kind: ToastKind; text: string; action?: ToastAction };
export type Notify = (text: string, kind?: ToastKind, action?: ToastAction) => void;

export function useToasts(): { toasts: Toast[]; notify: Notify } {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const toastId = useRef(0);
  const notify = useCallback((text: string, kind: ToastKind = "info", action?: ToastAction) => {
    const id = ++toastId.current;
    setToasts((t) => [...t.slice(-4), { id, kind, text, action }]);
    setTimeout(() => setToasts((t) => t.filter((x) => x.id !== id)), kind === "info" ? 4000 : 9000);
  }, []);
  return { toasts, notify };
}

export function Toasts({ toasts }: { toasts: Toast[] }) {
  return (
    <div className="sf-toasts" aria-live="polite">
      {toasts.map((t) => (
        <div key={t.id} className={`sf-toast ${t.kind}`} data-testid="toast" role={t.kind === "error" ? "alert" : "status"}>
          {t.text}
          {t.action && (
            <button type="button" className="sf-toast-action" onClick={t.action.run}>{t.action.label}</button>
          )}
        </div>
      ))}
    </div>
  );
}
