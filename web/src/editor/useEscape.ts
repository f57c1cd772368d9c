/** Close a dialog or panel with Escape, wherever the focus is. */

import { useEffect } from "react";

export function useEscape(onClose: () => void): void {
  useEffect(() => {
    const esc = (e: KeyboardEvent) => {
      if (e.key === "Escape") onClose();
    };
    window.addEventListener("keydown", esc);
    return () => window.removeEventListener("keydown", esc);
  }, [onClose]);
}
