/**
 * Short messages in the corner: info fades after 4 s, warnings and errors after 9 s. Every
 * toast has a × to dismiss it; opening another workflow clears the warnings and errors
 * about the previous one (`clearToasts`), not those about the server (`keep`), such as the
 * node packs that failed to load.
 */

import { useCallback, useRef, useState } from "react";

export type ToastKind = "info" | "warning" | "error";
/** A button on the toast (e.g. "Show" the nodes an error is about). */
export type ToastAction = { label: string; run(): void };
export type Toast = { id: number; kind: ToastKind; text: string; action?: ToastAction; keep?: boolean };
export type Notify = (text: string, kind?: ToastKind, action?: ToastAction, keep?: boolean) => void;

export function useToasts(): {
  toasts: Toast[]; notify: Notify; dismiss(id: number): void; clearToasts(kinds?: ToastKind[]): void;
} {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const toastId = useRef(0);
  const dismiss = useCallback((id: number) => setToasts((t) => t.filter((x) => x.id !== id)), []);
  const notify = useCallback((text: string, kind: ToastKind = "info", action?: ToastAction, keep = false) => {
    const id = ++toastId.current;
    setToasts((t) => [...t.slice(-4), { id, kind, text, action, ...(keep ? { keep } : {}) }]);
    setTimeout(() => dismiss(id), kind === "info" ? 4000 : 9000);
  }, [dismiss]);
  /** Drop the toasts of these kinds (default: warnings and errors), e.g. when another workflow opens. */
  const clearToasts = useCallback((kinds: ToastKind[] = ["warning", "error"]) => {
    setToasts((t) => t.filter((x) => x.keep || !kinds.includes(x.kind)));
  }, []);
  return { toasts, notify, dismiss, clearToasts };
}

export function Toasts({ toasts, dismiss }: { toasts: Toast[]; dismiss?(id: number): void }) {
  return (
    <div className="sf-toasts" aria-live="polite">
      {toasts.map((t) => (
        <div key={t.id} className={`sf-toast ${t.kind}`} data-testid="toast" role={t.kind === "error" ? "alert" : "status"}>
          <span className="sf-toast-text">{t.text}</span>
          {t.action && (
            <button type="button" className="sf-toast-action" onClick={t.action.run}>{t.action.label}</button>
          )}
          {dismiss && (
            <button type="button" className="sf-toast-close" aria-label="Dismiss" title="Dismiss"
              onClick={() => dismiss(t.id)}>×</button>
          )}
        </div>
      ))}
    </div>
  );
}
