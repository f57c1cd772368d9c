/**
 * Short messages in the corner: info fades after 4 s, warnings and errors after 9 s, those
 * about the server (`keep`: the node packs that failed to load) stay. Every toast has a ×
 * to dismiss it; opening another workflow clears the warnings and errors about the
 * previous one (`clearToasts`), not those about the server. A toast with a `tag` (a rejected Queue's) replaces the
 * one shown with that tag, and `retag` rewrites or removes it as what it says changes.
 */

import { useCallback, useLayoutEffect, useRef, useState } from "react";

export type ToastKind = "info" | "warning" | "error";
/** A button on the toast (e.g. "Show" the nodes an error is about). */
export type ToastAction = { label: string; run(): void };
export type Toast = { id: number; kind: ToastKind; text: string; action?: ToastAction; keep?: boolean; tag?: string };
/** `keep`: opening a workflow leaves it; `tag`: it replaces the toast shown with the same tag. */
export type ToastOptions = { keep?: boolean; tag?: string };
export type Notify = (text: string, kind?: ToastKind, action?: ToastAction, options?: ToastOptions) => void;

/** At most this many toasts at once: the oldest goes first. */
export const TOASTS_MAX = 5;

/** The toasts with `toast` added last: it replaces the one of its tag, and the oldest go past TOASTS_MAX. */
export function withToast(toasts: readonly Toast[], toast: Toast): Toast[] {
  const others = toast.tag === undefined ? toasts : toasts.filter((t) => t.tag !== toast.tag);
  return [...others.slice(-(TOASTS_MAX - 1)), toast];
}

/** The toast of `tag` saying `text` now, or gone (null); none is added when it is not shown (any more). */
export function retagged(toasts: readonly Toast[], tag: string, text: string | null): readonly Toast[] {
  const shown = toasts.find((t) => t.tag === tag);
  if (!shown || shown.text === text) return toasts;
  return text === null ? toasts.filter((t) => t !== shown) : toasts.map((t) => (t === shown ? { ...t, text } : t));
}

export function useToasts(): {
  toasts: Toast[]; notify: Notify; dismiss(id: number): void; clearToasts(kinds?: ToastKind[]): void;
  retag(tag: string, text: string | null): void;
} {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const toastId = useRef(0);
  const dismiss = useCallback((id: number) => setToasts((t) => t.filter((x) => x.id !== id)), []);
  const notify = useCallback<Notify>((text, kind = "info", action, { keep = false, tag } = {}) => {
    const id = ++toastId.current;
    setToasts((t) => withToast(t, { id, kind, text, action, ...(keep ? { keep } : {}), ...(tag ? { tag } : {}) }));
    // about the server (failed node packs): stays until its × is pressed, as nothing else
    // in the canvas says it
    if (!keep) setTimeout(() => dismiss(id), kind === "info" ? 4000 : 9000);
  }, [dismiss]);
  /** Drop the toasts of these kinds (default: warnings and errors), e.g. when another workflow opens. */
  const clearToasts = useCallback((kinds: ToastKind[] = ["warning", "error"]) => {
    setToasts((t) => t.filter((x) => x.keep || !kinds.includes(x.kind)));
  }, []);
  const retag = useCallback((tag: string, text: string | null) => {
    setToasts((t) => {
      const next = retagged(t, tag, text);
      return next === t ? t : [...next];
    });
  }, []);
  return { toasts, notify, dismiss, clearToasts, retag };
}

/** `aside`: a help panel is open at the canvas's right, and the toasts keep out of its way. */
export function Toasts({ toasts, dismiss, aside = false }: { toasts: Toast[]; dismiss?(id: number): void; aside?: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  // the room the toasts take at the window's bottom (--sf-toast-room): a help panel in a small
  // window, where no room is left beside it, ends above them (styles.css)
  useLayoutEffect(() => {
    const el = box.current;
    const root = document.documentElement.style;
    if (!el || !aside || !toasts.length) {
      root.removeProperty("--sf-toast-room");
      return;
    }
    const measure = () => root.setProperty("--sf-toast-room", `${Math.ceil(window.innerHeight - el.getBoundingClientRect().top)}px`);
    measure();
    const watch = new ResizeObserver(measure);
    watch.observe(el);
    return () => {
      watch.disconnect();
      root.removeProperty("--sf-toast-room");
    };
  }, [aside, toasts.length]);
  return (
    <div ref={box} className={`sf-toasts${aside ? " sf-toasts-aside" : ""}`} aria-live="polite">
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
