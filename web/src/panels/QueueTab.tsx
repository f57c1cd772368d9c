/** The Queue tab: the running and pending prompts, each with Load and Cancel. */

import { useCallback, useEffect, useState } from "react";
import { deleteFromQueue, getQueue, interrupt, type QueueItem } from "../api";
import { useGlobalRun } from "../canvas/context";
import type { RunStore } from "../lib/runstore";
import { workflowOf } from "./HistoryTab";

export function QueueTab({ store, onLoad, notify }: { store: RunStore; onLoad(obj: unknown): void; notify(msg: string): void }) {
  const { queueVersion, running, executing } = useGlobalRun(store);
  const [queue, setQueue] = useState<{ running: QueueItem[]; pending: QueueItem[] }>({ running: [], pending: [] });
  const refresh = useCallback(() => {
    getQueue().then(setQueue).catch(() => undefined);
  }, []);
  useEffect(refresh, [refresh, queueVersion, running]);
  const cancel = async (item: QueueItem, isRunning: boolean) => {
    try {
      if (isRunning) await interrupt(item.promptId);
      else await deleteFromQueue([item.promptId]);
    } catch (e) {
      notify(`Cancel failed: ${(e as Error).message}`);
    }
    refresh();
  };
  const row = (item: QueueItem, isRunning: boolean) => (
    <li key={item.promptId} className={`sf-queue-item${isRunning ? " running" : ""}`} data-prompt-id={item.promptId}>
      <span>#{item.number} {isRunning ? `running${executing ? ` (node ${executing})` : ""}` : "pending"}</span>
      <span className="sf-queue-actions">
        <button type="button" className="sf-small" onClick={() => onLoad(workflowOf(item.prompt, item.extra))}>Load</button>
        <button type="button" className="sf-small" onClick={() => cancel(item, isRunning)}>
          {isRunning ? "Interrupt" : "Cancel"}
        </button>
      </span>
    </li>
  );
  return (
    <div className="sf-tab">
      {queue.running.length === 0 && queue.pending.length === 0 && <div className="sf-muted">The queue is empty.</div>}
      <ul className="sf-list" aria-label="queue">
        {queue.running.map((i) => row(i, true))}
        {queue.pending.map((i) => row(i, false))}
      </ul>
    </div>
  );
}
