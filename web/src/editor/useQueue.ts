/** Queueing the graph: validation errors onto the nodes, warnings as toasts, control_after_generate. */

import { useCallback, useState } from "react";
import { ApiError, makeClientId, queuePrompt, type Socket } from "../api";
import { inputOf } from "../canvas/flow";
import { graphToDocument } from "../lib/graph";
import { selectedOutputs } from "../lib/partial";
import type { NodeErrors, RunStore } from "../lib/runstore";
import { type ControlMode, nextControlValue } from "../lib/schema";
import type { Notify } from "./Toasts";
import type { GraphStore } from "./useGraphStore";

export function useQueue(g: GraphStore, store: RunStore, socket: { current: Socket | null }, notify: Notify) {
  const { state, defsRef, currentGraph, setNodes } = g;
  const [busy, setBusy] = useState(false);

  /** Seeds and other widgets set to increment / randomize move on after each queued prompt. */
  const applyControlAfterGenerate = useCallback(() => {
    const linked = new Set(state.current.edges.map((e) => `${e.target}|${inputOf(e.targetHandle)}`));
    setNodes((ns) => ns.map((n) => {
      const control = n.data.control;
      const def = defsRef.current.get(n.data.type);
      if (!control || !def) return n;
      let values = n.data.values;
      for (const [name, mode] of Object.entries(control) as [string, ControlMode][]) {
        const input = def.inputs.find((i) => i.name === name);
        const v = values[name];
        if (mode === "fixed" || !input || typeof v !== "number" || linked.has(`${n.id}|${name}`)) continue;
        const nv = nextControlValue(input, v, mode);
        if (nv !== v) values = { ...values, [name]: nv };
      }
      return values === n.data.values ? n : { ...n, data: { ...n.data, values } };
    }));
  }, [state, defsRef, setNodes]);

  const queue = useCallback(async (targets?: string[]) => {
    const graph = currentGraph();
    if (!graph.nodes.length) {
      notify("Nothing to queue: add nodes first", "error");
      return;
    }
    store.clearErrors();
    const doc = graphToDocument(graph, defsRef.current);
    setBusy(true);
    try {
      const res = await queuePrompt(doc.prompt, socket.current?.clientId ?? makeClientId(), doc, targets);
      if (res.node_errors && Object.keys(res.node_errors).length) store.setValidationErrors(res.node_errors);
      notify(`Queued prompt${res.number !== undefined ? ` #${res.number}` : ""}`);
      // Warnings do not stop the run (e.g. an unknown embedding, an input a muted node fed).
      const warnings = res.warnings ?? [];
      for (const w of warnings.slice(0, 3)) notify(`Warning: ${w.node_id ? `node ${w.node_id}: ` : ""}${w.message}`, "warning");
      if (warnings.length > 3) notify(`… and ${warnings.length - 3} more warning${warnings.length === 4 ? "" : "s"}`, "warning");
      applyControlAfterGenerate();
      store.bumpQueue();
    } catch (e) {
      const body = e instanceof ApiError ? (e.body as { node_errors?: NodeErrors }) : undefined;
      const nodeErrors = body?.node_errors ?? {};
      const count = Object.values(nodeErrors).reduce((a, n) => a + (n.errors?.length ?? 0), 0);
      if (count) store.setValidationErrors(nodeErrors);
      const msg = `Prompt rejected: ${(e as Error).message}${count ? ` (${count} error${count === 1 ? "" : "s"} on the nodes)` : ""}`;
      store.setLastError(msg);
      notify(msg, "error");
    } finally {
      setBusy(false);
    }
  }, [currentGraph, notify, store, applyControlAfterGenerate, defsRef, socket]);

  /** Run only the selected output nodes (and what they need): partial_execution_targets. */
  const queueSelected = useCallback(async () => {
    const nodes = state.current.nodes.map((n) => ({ id: n.id, type: n.data.type, selected: n.selected }));
    const targets = selectedOutputs(nodes, defsRef.current);
    if (!targets.length) {
      notify("Select one or more output nodes (e.g. Save Image) to run only them", "error");
      return;
    }
    await queue(targets);
  }, [state, defsRef, notify, queue]);

  return { queue, queueSelected, busy };
}
