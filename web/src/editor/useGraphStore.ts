/**
 * The one store of the graph being edited: React Flow's nodes and edges, the
 * document's groups and extra, the undo history and the autosave. Every edit
 * goes through `setNodes` / `setEdges`; a debounced effect turns each settled
 * change into one undo step and one autosave.
 */

import { type EdgeChange, type NodeChange, applyEdgeChanges, applyNodeChanges, useReactFlow } from "@xyflow/react";
import { useCallback, useEffect, useRef, useState } from "react";
import { flowToGraph, graphToFlow, type SfEdge, type SfNode } from "../canvas/flow";
import { documentToGraph, type Graph, graphToDocument, type WorkflowDocument } from "../lib/graph";
import { type GroupBox, parseGroups } from "../lib/groups";
import { boundsOf, fitViewport, NODE_HEIGHT, NODE_WIDTH } from "../lib/layout";
import type { RunStore } from "../lib/runstore";
import type { Defs } from "../lib/schema";
import { changedInputs, readUndoKey, undoKey } from "../lib/undo";
import { FitTracker } from "../lib/viewfit";

export const AUTOSAVE_KEY = "steerflow.autosave";
/** Set beside the autosave while its viewport is still a fit: how to redo that fit (JSON). */
export const AUTOSAVE_FIT_KEY = "steerflow.autosave.fit";
const UNDO_MAX = 200;

export type GraphMeta = { extra: Record<string, unknown> };

export type GraphStore = ReturnType<typeof useGraphStore>;

/** React Flow fitView options a fit may use (plain numbers: they are saved beside the autosave). */
export type FitAllOptions = { padding?: number; minZoom?: number; maxZoom?: number };
/** How a view was fitted: the readable fit of an opened graph, or React Flow's fitView with these options. */
export type FitHow = "readable" | FitAllOptions;

/** How the autosaved viewport was fitted, if it still was a fit when saved. */
export function savedFit(): FitHow | null {
  try {
    const how = JSON.parse(localStorage.getItem(AUTOSAVE_FIT_KEY) ?? "null");
    return how === "readable" || (how && typeof how === "object") ? how : null;
  } catch {
    return null;
  }
}

export function useGraphStore(defs: Defs, store: RunStore) {
  const rf = useReactFlow<SfNode, SfEdge>();
  const [nodes, setNodes] = useState<SfNode[]>([]);
  const [edges, setEdges] = useState<SfEdge[]>([]);
  const [docName, setDocName] = useState("workflow");
  const docNameRef = useRef(docName);
  docNameRef.current = docName;
  const meta = useRef<GraphMeta>({ extra: {} });
  const [groups, setGroupsState] = useState<GroupBox[]>([]);
  const groupsRef = useRef(groups);
  groupsRef.current = groups;
  /** Set while a group is dragged: its many small moves make one undo step. */
  const holdHistory = useRef(false);
  /** The latest nodes and edges, for callbacks that must not re-render on every change. */
  const state = useRef({ nodes, edges });
  state.current = { nodes, edges };
  const defsRef = useRef(defs);
  defsRef.current = defs;
  const history = useRef<{ past: string[]; present: string | null; future: string[] }>({ past: [], present: null, future: [] });

  const currentGraph = useCallback((): Graph => {
    const { nodes, edges } = state.current;
    return flowToGraph(nodes, edges, { groups: groupsRef.current, extra: meta.current.extra, viewport: rf.getViewport() });
  }, [rf]);

  /** The last fit, redone when the canvas is resized while the view is still that fit (lib/viewfit.ts). */
  const fitTracker = useRef(new FitTracker<FitHow>()).current;

  /** Fit the graph at a readable zoom (lib/layout.ts); a large one shows its top-left part. */
  const fit = useCallback(() => {
    const ns = rf.getNodes();
    const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
    if (!ns.length || !pane) return;
    const rects = ns.map((n) => ({
      x: n.position.x, y: n.position.y,
      // nodes not rendered yet (out of view) count at a typical size
      width: n.measured?.width ?? n.width ?? NODE_WIDTH, height: n.measured?.height ?? NODE_HEIGHT,
    }));
    const vp = fitViewport(boundsOf(rects), pane.width, pane.height, ns.length);
    fitTracker.fitted(vp, "readable");
    void rf.setViewport(vp);
  }, [rf, fitTracker]);

  /** React Flow's fit of the whole graph (the fit button), remembered like `fit`. */
  const fitAll = useCallback((options: FitAllOptions = {}) => {
    if (!rf.getNodes().length) return;
    void rf.fitView(options).then(() => fitTracker.fitted(rf.getViewport(), options));
  }, [rf, fitTracker]);

  /** The canvas changed size: fit again if the view is still where the last fit left it. */
  const refit = useCallback(() => {
    const how = fitTracker.refit(rf.getViewport());
    if (how === "readable") fit();
    else if (how) fitAll(how);
  }, [rf, fitTracker, fit, fitAll]);

  /**
   * Open `graph`. Its own viewport, if it has one, is kept (`fitted`: that viewport was a
   * fit, which a resize redoes); without one the graph is fitted. `viewport: false` leaves
   * the view as it is (undo, redo).
   */
  const loadGraph = useCallback((graph: Graph, opts: { viewport?: boolean; resetRun?: boolean; fitted?: FitHow | null } = {}) => {
    const flow = graphToFlow(graph, defsRef.current);
    meta.current = { extra: graph.extra ?? {} };
    setGroupsState(parseGroups(graph.groups));
    setNodes(flow.nodes);
    setEdges(flow.edges);
    if (opts.resetRun !== false) store.reset();
    if (opts.viewport !== false) {
      fitTracker.forget(); // until this graph's own fit
      if (graph.viewport) {
        rf.setViewport(graph.viewport);
        if (opts.fitted) fitTracker.fitted(graph.viewport, opts.fitted);
      } else if (flow.nodes.length) setTimeout(fit, 60);
    }
  }, [rf, store, fit, fitTracker]);

  const writeAutosave = useCallback((doc?: WorkflowDocument, name: string = docName) => {
    try {
      const d = doc ?? graphToDocument(currentGraph(), defsRef.current);
      const viewport = rf.getViewport();
      d.layout.viewport = viewport;
      localStorage.setItem(AUTOSAVE_KEY, JSON.stringify({ ...d, extra: { ...d.extra, name } }));
      const how = fitTracker.refit(viewport);
      if (how) localStorage.setItem(AUTOSAVE_FIT_KEY, JSON.stringify(how));
      else localStorage.removeItem(AUTOSAVE_FIT_KEY);
    } catch {
      // storage full or unavailable: nothing to do
    }
  }, [currentGraph, rf, docName, fitTracker]);

  // One undo step and one autosave per settled change (not per drag frame).
  useEffect(() => {
    if (holdHistory.current || nodes.some((n) => n.dragging || n.resizing)) return;
    const timer = setTimeout(() => {
      const doc = graphToDocument(flowToGraph(nodes, edges, { groups, extra: meta.current.extra }), defsRef.current);
      const key = undoKey(doc, docName);
      const h = history.current;
      if (key === h.present) return; // selection or measurement only
      if (h.present !== null) {
        h.past.push(h.present);
        if (h.past.length > UNDO_MAX) h.past.shift();
        h.future = [];
      }
      h.present = key;
      writeAutosave(doc);
    }, 200);
    return () => clearTimeout(timer);
  }, [nodes, edges, groups, docName, writeAutosave]);

  /** Undo / redo: open the document `key` in place; `from` is the one shown until now. */
  const restoreKey = useCallback((key: string, from: string) => {
    const { doc, name } = readUndoKey(key);
    loadGraph(documentToGraph(doc, defsRef.current).graph, { viewport: false, resetRun: false });
    setDocName(name);
    writeAutosave(doc as unknown as WorkflowDocument, name);
    // the last run's messages about the values and links this step put back go with them
    for (const [id, input] of changedInputs(readUndoKey(from).doc.prompt ?? {}, doc.prompt ?? {})) store.clearInputErrors(id, input);
  }, [loadGraph, writeAutosave, store]);

  /**
   * Record an edit the debounce above has not settled yet, so that an undo pressed right
   * after an edit (a Like in the gallery, a typed value) undoes that edit, not the one before.
   */
  const settleNow = useCallback(() => {
    const { nodes: ns, edges: es } = state.current;
    const doc = graphToDocument(flowToGraph(ns, es, { groups: groupsRef.current, extra: meta.current.extra }), defsRef.current);
    const key = undoKey(doc, docNameRef.current);
    const h = history.current;
    if (h.present === null) {
      // the graph just opened and the debounce has not recorded it yet: it is the base
      h.present = key;
      return;
    }
    if (key === h.present) return;
    h.past.push(h.present);
    if (h.past.length > UNDO_MAX) h.past.shift();
    h.future = [];
    h.present = key;
  }, []);

  const undo = useCallback(() => {
    settleNow();
    const h = history.current;
    const prev = h.past.pop();
    if (prev === undefined || h.present === null) return;
    const from = h.present;
    h.future.push(from);
    h.present = prev;
    restoreKey(prev, from);
  }, [restoreKey, settleNow]);

  const redo = useCallback(() => {
    settleNow();
    const h = history.current;
    const next = h.future.pop();
    if (next === undefined || h.present === null) return;
    const from = h.present;
    h.past.push(from);
    h.present = next;
    restoreKey(next, from);
  }, [restoreKey, settleNow]);

  /** Edit the groups (saved and undoable like any other edit). */
  const setGroups = useCallback((fn: (groups: GroupBox[]) => GroupBox[]) => setGroupsState(fn), []);

  const patchNode = useCallback((id: string, fn: (n: SfNode) => SfNode) => {
    setNodes((ns) => ns.map((n) => (n.id === id ? fn(n) : n)));
  }, []);

  const onNodesChange = useCallback((changes: NodeChange<SfNode>[]) => {
    setNodes((ns) => {
      const next = applyNodeChanges(changes, ns);
      // A resize (NodeResizer) sets the width and a minimum height: the node still grows with its content.
      const resized = new Map<string, { width: number; height: number }>();
      for (const c of changes) if (c.type === "dimensions" && c.setAttributes && c.dimensions) resized.set(c.id, c.dimensions);
      if (!resized.size) return next;
      return next.map((n) => {
        const d = resized.get(n.id);
        if (!d) return n;
        const { height: _h, ...rest } = n;
        return { ...rest, width: Math.round(d.width), data: { ...n.data, size: [Math.round(d.width), Math.round(d.height)] } };
      });
    });
  }, []);
  const onEdgesChange = useCallback((changes: EdgeChange<SfEdge>[]) => {
    setEdges((es) => applyEdgeChanges(changes, es));
  }, []);

  return {
    nodes, edges, setNodes, setEdges, state, meta, store, defsRef, docName, setDocName, groups, setGroups, holdHistory,
    currentGraph, loadGraph, fit, fitAll, refit, writeAutosave, undo, redo, patchNode, onNodesChange, onEdgesChange, settleNow,
  };
}
