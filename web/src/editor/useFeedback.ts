/** FABRIC feedback from the gallery (logic in lib/feedback.ts) as one ordinary, undoable edit. */

import { useCallback, useMemo } from "react";
import { flowToGraph, inHandle, toFlowEdge, toFlowNode } from "../canvas/flow";
import {
  applyFeedbackOps, BATCH_TYPE, FABRIC_TYPE, type FeedbackKind, feedbackState, type FeedbackState, toggleFeedback,
} from "../lib/feedback";
import type { ImageRef } from "../lib/runstore";
import type { FeedbackView } from "../panels/SidePanel";
import type { Notify } from "./Toasts";
import type { GraphStore } from "./useGraphStore";

/** Where a node of `type` wanted with its top-left at `at` goes so that it covers no node. */
type Place = (type: string, at: { x: number; y: number }, view?: undefined, corner?: boolean) => { x: number; y: number };

export function useFeedback(g: GraphStore, notify: Notify, place: Place): FeedbackView | null {
  const { nodes, edges, state, currentGraph, defsRef, setNodes, setEdges, settleNow } = g;
  // A key, so the side panel re-renders when the liked/disliked lists change, not on drags.
  const feedbackKey = useMemo(() => {
    if (!nodes.some((n) => n.data.type === FABRIC_TYPE)) return "";
    const selected = new Set(nodes.filter((n) => n.selected).map((n) => n.id));
    const st = feedbackState(flowToGraph(nodes, edges), selected);
    return JSON.stringify([st.target, [...st.liked], [...st.disliked]]);
  }, [nodes, edges]);

  const toggleImageFeedback = useCallback((img: ImageRef, kind: FeedbackKind) => {
    const graph = currentGraph();
    const selected = new Set(state.current.nodes.filter((n) => n.selected).map((n) => n.id));
    const edit = toggleFeedback(graph, defsRef.current, img, kind, selected);
    if (!edit.ok) {
      notify(edit.reason, "error");
      return;
    }
    // One ordinary edit (one undo step, autosaved): the nodes and links after the ops. An
    // edit not yet settled (a click a moment ago) becomes its own step first, so two quick
    // clicks are two undo steps, not one merged change that undoes to nothing.
    settleNow();
    const next = applyFeedbackOps(graph, edit.ops);
    const byId = new Map(next.nodes.map((n) => [n.id, n]));
    // a new Load Image Batch goes beside the FABRIC node, moved off any node already there
    const added = next.nodes.filter((n) => !state.current.nodes.some((m) => m.id === n.id)).map((n) => {
      const at = place(n.type, { x: n.pos[0], y: n.pos[1] }, undefined, true);
      return { ...n, pos: [at.x, at.y] as [number, number] };
    });
    setNodes((ns) => [
      ...ns.map((n) => {
        const values = byId.get(n.id)?.values;
        return values && values !== n.data.values ? { ...n, data: { ...n.data, values } } : n;
      }),
      ...added.map(toFlowNode),
    ]);
    const links = edit.ops.flatMap((o) => (o.op === "add" ? [o.link] : []));
    if (links.length) {
      setEdges((es) => [
        ...es.filter((e) => !links.some((l) => e.target === l.target && e.targetHandle === inHandle(l.input))),
        ...links.map((l) => toFlowEdge(l, defsRef.current, BATCH_TYPE)),
      ]);
    }
  }, [currentGraph, notify, state, defsRef, setNodes, setEdges, settleNow, place]);

  return useMemo(() => {
    if (!feedbackKey) return null;
    const [target, liked, disliked] = JSON.parse(feedbackKey) as [string | null, string[], string[]];
    if (!target) return null;
    const st: FeedbackState = { target, liked: new Set(liked), disliked: new Set(disliked) };
    return { state: st, toggle: toggleImageFeedback };
  }, [feedbackKey, toggleImageFeedback]);
}
