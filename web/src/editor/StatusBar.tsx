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
  const { connected, running, executing, queueRemaining, queueVersion, lastError, lastWarning, lostPrompt, ofGraph } = useGlobalRun(store);
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
      {connected ? "connected" : <span className="sf-status-lost" data-testid="connection-lost">
        {lostPrompt ? "connection lost — the run's state is unknown" : "disconnected"}</span>}
      {" · "}queue {queueRemaining}
      {/* a prompt not queued from this graph (another workflow's, or another client's): its node
          ids need not be this graph's, so its node is named in the queue panel only */}
      {running && <> · running{!ofGraph ? " a prompt not queued from this graph" : executing ? ` ${labelOf(executing)}` : ""}</>}
      {!running && others > 0 && <> · {othersRunningText(others)}</>}
      {lastError && <span className="sf-status-error" title={lastError}> · {lastError}</span>}
      {lastWarning && <span className="sf-status-warning" title={lastWarning}> · warning: {lastWarning}</span>}
    </div>
  );
}

/**
 * Over the canvas while the server cannot be reached: says so plainly, and that a prompt that
 * was running may be run again by the server when it restarts (a killed head is re-queued).
 */
/** How long the connection must be down before the banner shows (unless a run was lost). */
export const BANNER_DELAY_MS = 1500;

export function ConnectionBanner({ store }: { store: RunStore }) {
  const { connected, lostPrompt } = useGlobalRun(store);
  // not while the page's first connection opens (or a reconnect takes a moment): after 1.5 s
  const [late, setLate] = useState(false);
  useEffect(() => {
    setLate(false);
    if (connected) return;
    const t = setTimeout(() => setLate(true), BANNER_DELAY_MS);
    return () => clearTimeout(t);
  }, [connected]);
  if (connected || (!late && !lostPrompt)) return null;
  return (
    <div className="sf-offline" role="alert" data-testid="offline-banner">
      <strong>Connection lost: the server cannot be reached.</strong>{" "}
      {lostPrompt
        ? "The running prompt's state is unknown — the server may re-run this prompt when it restarts. "
        : ""}
      Your edits are kept; reconnecting…
    </div>
  );
}
