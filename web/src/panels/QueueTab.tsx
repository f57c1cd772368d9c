/**
 * The Queue tab: the running and pending prompts, each with Load and Cancel. The running
 * one shows its progress (node k of n, the node's title, its step out of total) and its
 * elapsed time; a pending one how long it has waited (since this page saw it).
 */

import { useCallback, useEffect, useRef, useState } from "react";
import { clearQueue, deleteFromQueue, getQueue, getSystemStats, interrupt, type QueueItem } from "../api";
import { clientOf, fairQueueOf, promptNumberText, runnableCount, turnsNote } from "../lib/queueview";
import { useGlobalRun } from "../canvas/context";
import { formatElapsed } from "../lib/batch";
import type { ApiPrompt } from "../lib/graph";
import type { RanOutputs } from "../lib/history";
import type { ImageRef, RunStore } from "../lib/runstore";
import { workflowName, workflowOf } from "./HistoryTab";
import { LatestResult } from "./LatestResult";

/** Re-render every `ms` while `on` (elapsed times tick). */
function useNow(on: boolean, ms = 500): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    if (!on) return;
    setNow(Date.now());
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [on, ms]);
  return now;
}

function nodeLabel(prompt: unknown, id: string): string {
  const node = (prompt as ApiPrompt | undefined)?.[id];
  const name = node?._meta?.title || node?.class_type;
  return name ? `${name} #${id}` : `node ${id}`;
}

/** The running prompt's progress line: node k of n, the node, its steps, the elapsed time. */
function RunningProgress({ store, item, now }: { store: RunStore; item: QueueItem; now: number }) {
  // the step comes from the store's global record: a prompt of another graph is drawn on no node
  const { promptId, executing, nodesDone, startedAt, joinedMidway, progress } = useGlobalRun(store);
  if (promptId !== item.promptId) return <span className="sf-queue-progress">running</span>;
  const total = runnableCount(item.prompt);
  const step = progress && executing ? progress : null;
  const fraction = step && step.max > 0 ? step.value / step.max : 0;
  return (
    <span className="sf-queue-progress" data-testid="queue-progress">
      <span>
        running
        {executing && <> · {nodeLabel(item.prompt, executing)}</>}
        {total > 0 && !joinedMidway && <> · node {Math.min(total, nodesDone + (executing ? 1 : 0))}/{total}</>}
        {step && <> · step {step.value}/{step.max}</>}
        {startedAt !== null && <> · <span data-testid="elapsed">{formatElapsed(now - startedAt)}</span></>}
      </span>
      {step && (
        <span className="sf-queue-bar" role="progressbar" aria-valuemin={0} aria-valuemax={step.max} aria-valuenow={step.value}>
          <span style={{ width: `${Math.round(fraction * 100)}%` }} />
        </span>
      )}
    </span>
  );
}

export function QueueTab({ store, onLoad, notify, openImage, clientId }: {
  store: RunStore; onLoad(obj: unknown, name: string, ran?: RanOutputs): void; notify(msg: string): void; openImage(img: ImageRef, set?: readonly ImageRef[]): void;
  clientId(): string | undefined;
}) {
  const { queueVersion, running, connected } = useGlobalRun(store);
  const [queue, setQueue] = useState<{ running: QueueItem[]; pending: QueueItem[] }>({ running: [], pending: [] });
  /** When this page first saw each pending prompt (the server does not say when it was queued). */
  const seen = useRef(new Map<string, number>());
  const refresh = useCallback(() => {
    getQueue().then((q) => {
      const t = Date.now();
      const ids = new Set([...q.running, ...q.pending].map((i) => i.promptId));
      for (const id of ids) if (!seen.current.has(id)) seen.current.set(id, t);
      for (const id of [...seen.current.keys()]) if (!ids.has(id)) seen.current.delete(id);
      setQueue(q);
    }).catch(() => undefined);
  }, []);
  useEffect(refresh, [refresh, queueVersion, running]);
  // whether the server runs waiting clients in turns (read again after a reconnect: a restart may change it)
  const [fair, setFair] = useState(false);
  useEffect(() => {
    if (!connected) return;
    let live = true;
    getSystemStats().then((s) => live && setFair(fairQueueOf(s))).catch(() => undefined);
    return () => {
      live = false;
    };
  }, [connected]);
  // no clock while the server is unreachable: what runs is unknown, so nothing is counted
  const now = useNow(connected && queue.running.length + queue.pending.length > 0);
  const cancel = async (item: QueueItem, isRunning: boolean) => {
    try {
      if (isRunning) await interrupt(item.promptId);
      else await deleteFromQueue([item.promptId]);
    } catch (e) {
      notify(`Cancel failed: ${(e as Error).message}`);
    }
    refresh();
  };
  const mine = clientId() ?? null;
  const othersOf = (item: QueueItem) => clientOf(item) !== mine;
  const note = turnsNote(fair, queue.pending);
  const row = (item: QueueItem, isRunning: boolean) => (
    <li key={item.promptId} className={`sf-queue-item${isRunning && connected ? " running" : ""}`} data-prompt-id={item.promptId}>
      <span className="sf-queue-text">
        <span title={`number ${item.number}`}>{promptNumberText(item.number)}</span>{" "}
        {othersOf(item) && <span className="sf-muted" data-testid="other-client">another client · </span>}
        {!connected
          ? <span className="sf-queue-progress" data-testid="queue-unknown">unknown: server unreachable</span>
          : isRunning && othersOf(item)
          ? <span className="sf-queue-progress">running</span>
          : isRunning
          ? <RunningProgress store={store} item={item} now={now} />
          : <span className="sf-queue-progress">pending · waiting {formatElapsed(now - (seen.current.get(item.promptId) ?? now))}</span>}
      </span>
      <span className="sf-queue-actions">
        <button type="button" className="sf-small" onClick={() => onLoad(workflowOf(item.prompt, item.extra), workflowName(item.extra))}>Load</button>
        <button type="button" className="sf-small" onClick={() => cancel(item, isRunning)}>
          {isRunning ? "Interrupt" : "Cancel"}
        </button>
      </span>
    </li>
  );
  /** ComfyUI's queue Clear: drop every pending prompt; the running one goes on (Interrupt stops it). */
  const clearPending = async () => {
    try {
      await clearQueue();
    } catch (e) {
      notify(`Clear failed: ${(e as Error).message}`);
    }
    refresh();
  };
  return (
    <div className="sf-tab">
      {queue.pending.length > 0 && (
        <div className="sf-tab-actions">
          <button type="button" className="sf-small" onClick={clearPending}
            title="Remove every pending prompt (the running one goes on)">Clear pending ({queue.pending.length})</button>
        </div>
      )}
      {queue.running.length === 0 && queue.pending.length === 0 && <div className="sf-muted">The queue is empty.</div>}
      {note && <div className="sf-muted" data-testid="queue-turns">{note}</div>}
      <ul className="sf-list" aria-label="queue">
        {queue.running.map((i) => row(i, true))}
        {queue.pending.map((i) => row(i, false))}
      </ul>
      <LatestResult store={store} openImage={openImage} />
    </div>
  );
}
