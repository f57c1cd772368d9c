/**
 * Queueing the graph (N times): validation errors onto the nodes, warnings as toasts,
 * control_after_generate, dynamic prompts resolved per queued prompt (lib/dynamicprompts.ts).
 */

import { useReactFlow } from "@xyflow/react";
import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, makeClientId, makePromptId, queuePrompt, type Socket } from "../api";
import { advanceControls, clampCount } from "../lib/batch";
import { ControlCarry, SerialRunner } from "../lib/queuechain";
import { isNetworkError, unreachableText } from "../lib/errors";
import { queuedPrompt } from "../lib/dynamicprompts";
import { selectedOutputs } from "../lib/partial";
import { summariseRejection } from "../lib/rejection";
import { captureAll } from "../lib/webcam";
import type { NodeErrors, RunStore } from "../lib/runstore";
import { nodeTitle } from "../lib/schema";
import type { Notify } from "./Toasts";
import type { GraphStore } from "./useGraphStore";

/** The tag of a rejected Queue's toast: the next rejection replaces it (editor/Toasts.tsx). */
const REJECTION_TOAST = "rejection";
const FAILURE_TOAST = "failure";

export function useQueue(g: GraphStore, store: RunStore, socket: { current: Socket | null }, notify: Notify,
  retag: (tag: string, text: string | null) => void) {
  const { state, defsRef, currentGraph, setNodes, openedCount, nodes, docNameNow } = g;
  const rf = useReactFlow();
  const [busy, setBusy] = useState(false);
  // presses made while an earlier queue call posts wait for it, in order (lib/queuechain.ts)
  const runner = useRef<SerialRunner | null>(null);
  runner.current ??= new SerialRunner(setBusy);
  const carry = useRef(new ControlCarry()).current;
  /** The graph (openedCount) the carried values are for. */
  const carryGraph = useRef(openedCount());
  // What the canvas shows is what runs: once a render shows the moved-on values (or the user
  // changed them), nothing is carried any more, so a value shown again later (typed back,
  // the workflow opened again) is never replaced by one moved on before.
  useEffect(() => {
    carry.settle(nodes.map((n) => ({ id: n.id, values: n.data.values, control: n.data.control })));
  }, [nodes, carry]);

  const titleOf = useCallback((id: string): string => {
    const node = state.current.nodes.find((n) => n.id === id);
    if (!node) return "node";
    return nodeTitle(node.data, defsRef.current);
  }, [state, defsRef]);

  /** Bring the nodes a rejection is about into view, selected. */
  const showNodes = useCallback((ids: string[]) => {
    const wanted = new Set(ids);
    setNodes((ns) => ns.map((n) => (wanted.has(n.id) !== !!n.selected ? { ...n, selected: wanted.has(n.id) } : n)));
    void rf.fitView({ nodes: ids.map((id) => ({ id })), padding: 0.25, maxZoom: 1, duration: 250 });
  }, [rf, setNodes]);

  /**
   * Queue the graph `count` times (ComfyUI's batch count): seeds and other widgets set to
   * increment / randomize move on after each prompt, and the canvas then shows the values
   * the next Queue would use. Each prompt reads the graph again (as ComfyUI's queuePrompt
   * does), so a widget the user edits while the prompts are posted is used from the next
   * prompt on. `targets` (output node ids) runs only those and what they need; `front`
   * queues before the waiting prompts (ComfyUI's Ctrl+Shift+Enter). A call made while
   * another posts runs after it, with the values that one moved on.
   */
  const queueNow = useCallback(async (targets?: string[], count = 1, front = false) => {
    /** The canvas as it is now, with the values moved on that it does not show yet (lib/queuechain.ts). */
    const read = () => {
      // a graph opened since the values were carried (a file, a drop, an example, history's
      // Load, a PNG, undo): they were another graph's, and it shows its own
      if (carryGraph.current !== openedCount()) {
        carry.clear();
        carryGraph.current = openedCount();
      }
      const now = currentGraph();
      return { ...now, nodes: carry.apply(now.nodes) };
    };
    /** The moved-on values onto the canvas, only where it still shows one from before the move. */
    const showMoved = () => setNodes((ns) => ns.map((node) => {
      const values = carry.merge(node.id, node.data.values, node.data.control);
      return values === node.data.values ? node : { ...node, data: { ...node.data, values } };
    }));
    if (!currentGraph().nodes.length) {
      notify("Nothing to queue: add nodes first", "error");
      return;
    }
    store.clearErrors();
    const n = clampCount(count);
    const numbers: number[] = [];
    /** The prompts queued, as text: all the same (every seed fixed) means one image n times. */
    const distinct = new Set<string>();
    try {
      // Webcam Capture nodes with capture_on_queue: a fresh capture goes into the prompts (as
      // ComfyUI's front end, not onto the canvas: "queue on change" would see a change and loop)
      const captured = await captureAll(currentGraph().nodes.filter((gn) => gn.mode !== "muted"));
      for (let i = 0; i < n; i++) {
        const seq = openedCount();
        let graph = read();
        if (captured.size) {
          graph = { ...graph, nodes: graph.nodes.map((gn) => (captured.has(gn.id)
            ? { ...gn, values: { ...gn.values, image: captured.get(gn.id) } } : gn)) };
        }
        // each prompt picks its own {a|b} of the dynamic prompts; the saved workflow keeps the typed text
        const queued = queuedPrompt(graph, defsRef.current);
        const prompt = queued.prompt;
        distinct.add(JSON.stringify(prompt, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v)));
        // its name goes with it: History's Load opens it under that name (it was "workflow")
        const workflow = { ...queued.workflow, extra: { ...queued.workflow.extra, name: docNameNow() } };
        // the open graph's prompt (its run is drawn on these nodes, not on a graph opened later),
        // claimed before it is posted: it may start, and send its messages, before the answer
        const promptId = makePromptId();
        store.claimPrompt(promptId);
        let res;
        try {
          res = await queuePrompt(prompt, socket.current?.clientId ?? makeClientId(), workflow, targets, front, promptId);
        } catch (e) {
          store.unclaimPrompt(promptId);
          throw e;
        }
        if (res.node_errors && Object.keys(res.node_errors).length) store.setValidationErrors(res.node_errors);
        if (res.number !== undefined) numbers.push(res.number);
        // Warnings do not stop the run (e.g. an unknown embedding, an input a muted node fed).
        const warnings = i === 0 ? res.warnings ?? [] : [];
        for (const w of warnings.slice(0, 3)) notify(`Warning: ${w.node_id ? `node ${w.node_id}: ` : ""}${w.message}`, "warning");
        if (warnings.length > 3) notify(`… and ${warnings.length - 3} more warning${warnings.length === 4 ? "" : "s"}`, "warning");
        // move the seeds on from what this prompt read; an edit made meanwhile stays (and is read next).
        // Not when another graph was opened while it posted: the canvas shows that one's values.
        if (seq === openedCount()) {
          carry.record(graph.nodes, advanceControls(graph.nodes, graph.links, defsRef.current));
          showMoved();
        }
        store.bumpQueue();
      }
      // (a prompt put at the front gets a negative number: not worth showing)
      const range = numbers.length && !front ? (n === 1 ? ` #${numbers[0]}` : ` (#${numbers[0]}–#${numbers[numbers.length - 1]})`) : "";
      const where = front ? " at the front of the queue" : "";
      // one at a time: queueing several in a row must not stack them over the canvas
      if (n > 1 && distinct.size === 1 && numbers.length === n) {
        // the cache then answers n − 1 of them at once with the same image (a newcomer's walk)
        const seeded = currentGraph().nodes.some((gn) => Object.keys(gn.control ?? {}).length > 0);
        notify(`Queued ${n} prompts${range}${where}, all the same, so they make one result`
          + (seeded ? ": every seed is fixed. For different images set a seed's control (beside it) to increment "
            + "or randomize." : "."), "warning", undefined, { tag: "queued" });
      } else {
        notify(n === 1 ? `Queued prompt${range}${where}` : `Queued ${n} prompts${range}${where}`,
          "info", undefined, { tag: "queued" });
      }
    } catch (e) {
      if (isNetworkError(e)) {
        // no answer at all (the server is down or restarting): not a rejection; the status
        // bar's message goes when the connection comes back (RunStore.setConnected)
        const msg = `${unreachableText(e)}${numbers.length ? `; ${numbers.length} queued before` : ""}`;
        store.setLastError(msg, { offline: true });
        notify(msg, "error");
        return;
      }
      const body = e instanceof ApiError ? (e.body as { node_errors?: NodeErrors }) : undefined;
      const nodeErrors = body?.node_errors ?? {};
      const head = `Prompt rejected${numbers.length ? ` after ${numbers.length} queued` : ""}`;
      // With errors on the nodes, the toast says how many inputs and where; each message is
      // on its node's input (not repeated here). As the user fixes them, the toast and the
      // status bar count those still marked, and go when none is left. "Show" brings the
      // nodes still marked into view.
      const summary = summariseRejection(nodeErrors, titleOf);
      if (summary) store.setValidationErrors(nodeErrors);
      store.setRejection((marked) => {
        if (!summary) return `${head}: ${(e as Error).message}`;
        const now = summariseRejection(marked, titleOf);
        return now ? `${head}: ${now.text}` : null;
      });
      const text = store.getGlobal().rejection;
      const show = () => showNodes(Object.keys(store.markedErrors()));
      if (text) notify(text, "error", summary ? { label: "Show", run: show } : undefined, { tag: REJECTION_TOAST });
    }
  }, [currentGraph, notify, store, defsRef, socket, setNodes, titleOf, showNodes, carry, openedCount]);

  // The rejection's toast says what the status bar says, and goes with it (once all is fixed).
  // A listener, not useGlobalRun: the editor need not re-render on every progress message.
  // Deferred: an input is fixed inside a setNodes updater, which React may run while rendering.
  useEffect(() => {
    let shown = store.getGlobal().rejection;
    return store.subscribe(() => {
      const now = store.getGlobal().rejection;
      if (now === shown) return;
      shown = now;
      queueMicrotask(() => retag(REJECTION_TOAST, now));
    });
  }, [store, retag]);

  // A run of this graph that fails says so where the user looks (the node may be off screen,
  // the status bar small), as a rejection does, with "Show" to bring its node into view.
  useEffect(() => {
    let seen = store.getGlobal().failure?.seq ?? 0;
    return store.subscribe(() => {
      const failure = store.getGlobal().failure;
      if (!failure || failure.seq === seen) return;
      seen = failure.seq;
      const { node, message } = failure;
      const short = message.length > 300 ? `${message.slice(0, 297)}...` : message;
      queueMicrotask(() => notify(`Run failed${node ? ` at ${titleOf(node)} #${node}` : ""}: ${short}`, "error",
        node ? { label: "Show", run: () => showNodes([node]) } : undefined, { tag: FAILURE_TOAST }));
    });
  }, [store, notify, titleOf, showNodes]);

  const queue = useCallback((targets?: string[], count = 1, front = false) =>
    (runner.current as SerialRunner).run(() => queueNow(targets, count, front)), [queueNow]);

  /** Run only the selected output nodes (and what they need): partial_execution_targets. */
  const queueSelected = useCallback(async () => {
    const nodes = state.current.nodes.map((n) => ({ id: n.id, type: n.data.type, selected: n.selected }));
    const targets = selectedOutputs(nodes, defsRef.current);
    if (!targets.length) {
      notify("Select one or more output nodes (e.g. Save Image) to run only them", "error", undefined, { tag: "run-selected" });
      return;
    }
    await queue(targets);
  }, [state, defsRef, notify, queue]);

  return { queue, queueSelected, busy, showNodes };
}
