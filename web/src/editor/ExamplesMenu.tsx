/** The toolbar's Examples menu: the server's example workflows, opened with one click. */

import { useCallback, useEffect, useState } from "react";
import { type ExampleRef, listWorkflows } from "../api";
import type { Notify } from "./Toasts";

export function ExamplesMenu({ onOpen, notify }: { onOpen(ex: ExampleRef): void; notify: Notify }) {
  const [examples, setExamples] = useState<ExampleRef[] | null>(null);

  const toggle = useCallback(async () => {
    if (examples) {
      setExamples(null);
      return;
    }
    try {
      setExamples(await listWorkflows());
    } catch (e) {
      notify(`Cannot list examples: ${(e as Error).message}`, "error");
    }
  }, [examples, notify]);

  useEffect(() => {
    if (!examples) return;
    const close = (e: MouseEvent) => {
      if (!(e.target as HTMLElement | null)?.closest(".sf-menu")) setExamples(null);
    };
    window.addEventListener("mousedown", close);
    return () => window.removeEventListener("mousedown", close);
  }, [examples]);

  return (
    <div className="sf-menu">
      <button type="button" onClick={() => void toggle()}>Examples ▾</button>
      {examples && (
        <ul className="sf-menu-list" role="menu">
          {examples.length === 0 && <li className="sf-muted">No examples</li>}
          {examples.map((ex) => (
            <li key={ex.name} role="menuitem" onClick={() => { setExamples(null); onOpen(ex); }}>{ex.title}</li>
          ))}
        </ul>
      )}
    </div>
  );
}
