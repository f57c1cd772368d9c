/** While `on`, Tab and Shift+Tab stay inside the dialog `box` (lib/focustrap.ts). */

import { type RefObject, useEffect } from "react";
import { trapTab } from "../lib/focustrap";

export function useFocusTrap(box: RefObject<HTMLElement | null>, on = true): void {
  useEffect(() => {
    if (!on) return;
    const onKey = (e: KeyboardEvent) => {
      if (e.defaultPrevented) return;
      trapTab(e, box.current);
    };
    // on the window: a focus that left the dialog (a click on its backdrop) is brought back too
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [box, on]);
}
