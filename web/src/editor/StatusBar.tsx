/**
 * The status bar under the canvas: the connection, the shared queue's length, and what
 * runs: this page's prompt (its node), or another client's (read from the queue, since
 * a prompt's run events go only to the client that queued it).
 */

import { useEffect, useRef, useState } from "react";
import { getQueue } from "../api";
import { useGlobalRun } from "../canvas/context";
import { othersRunning, othersRunningText } from "../lib/queueview";
import type { RunStore } from "../lib/runstore";

/** How often the queue is read while it is busy with prompts this page does not run. */
export const OTHERS_POLL_MS = 2000;

export function StatusBar({ store, labelOf, clientId }: {
  store: RunStore; labelOf(id: string): string; clientId(): string | undefined;
}) {
  const { connected, running, executing, queueRemaining, queueVersion, lastError, lastWarning } = useGlobalRun(store);
  // Another client's run sends this page no events: the shared queue says whose it is.
  const [others, setOthers] = useState(0);
  const clientIdRef = useRef(clientId);
  clientIdRef.current = clientId;
  useEffect(() => {
    if (!connected || running || queueRemaining === 0) {
      setOthers(0);
      return;
    }
    // Taking a pending prompt to run leaves the queue's length as it was (no status
    // message): look again while the queue is busy and this page runs nothing.
    let live = true;
    const look = () => {
      getQueue()
        .then((q) => live && setOthers(othersRunning(q.running, clientIdRef.current())))
        .catch(() => undefined);
    };
    look();
    const timer = setInterval(look, OTHERS_POLL_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [connected, running, queueRemaining, queueVersion]);
  return (
    <div className="sf-status" data-testid="status">
      <span className={`sf-dot ${connected ? "on" : "off"}`} title={connected ? "connected" : "disconnected"} />
      {connected ? "connected" : "disconnected"}
      {" · "}queue {queueRemaining}
      {running && <> · running{executing ? ` ${labelOf(executing)}` : ""}</>}
      {!running && others > 0 && <> · {othersRunningText(others)}</>}
      {lastError && <span className="sf-status-error" title={lastError}> · {lastError}</span>}
      {lastWarning && <span className="sf-status-warning" title={lastWarning}> · warning: {lastWarning}</span>}
    </div>
  );
}
