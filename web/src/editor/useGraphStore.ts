/**
 * The one store of the graph being edited: React Flow's nodes and edges, the
 * document's groups and extra, the undo history and the autosave. Every edit
 * goes through `setNodes` / `setEdges`; a debounced effect turns each settled
 * change into one undo step and one autosave.
 */

import {
  type EdgeChange, type NodeChange, applyEdgeChanges, applyNodeChanges, getViewportForBounds, useReactFlow,
} from "@xyflow/react";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { flowToGraph, graphToFlow, type SfEdge, type SfNode } from "../canvas/flow";
import { arrangeOpened, makeRoomBelow } from "../lib/arrange";
import { documentToGraph, type Graph, graphToDocument, type WorkflowDocument } from "../lib/graph";
import { type GroupBox, parseGroups } from "../lib/groups";
import {
  boundsOf, CANVAS_MAX_ZOOM, CANVAS_MIN_ZOOM, estimateNodeHeight, FIT_MARGIN, FIT_MAX_ZOOM, fitViewport, keepsReadableView, NODE_HEIGHT, NODE_WIDTH, WHOLE_VIEW_ZOOM,
  type Rect, resultRoom, showsAll, showsAny, type Viewport,
} from "../lib/layout";
import type { RunStore } from "../lib/runstore";
import type { Defs } from "../lib/schema";
import { changedInputs, readUndoKey, recordStep, segmentOf, StepFiles, type UndoHistory, undoKey } from "../lib/undo";
import { FitTracker, sameViewport } from "../lib/viewfit";
import { TabAutosave } from "../lib/autosave";
import { keepReplaced } from "../lib/replaced";

export { LATEST_KEY as AUTOSAVE_KEY, LATEST_FIT_KEY as AUTOSAVE_FIT_KEY } from "../lib/autosave";
const UNDO_MAX = 200;

export type GraphMeta = { extra: Record<string, unknown> };

export type GraphStore = ReturnType<typeof useGraphStore>;

/** React Flow fitView options a fit may use (plain numbers: they are saved beside the autosave). */
export type FitAllOptions = { padding?: number; minZoom?: number; maxZoom?: number };
/** How a view was fitted: the readable fit of an opened graph, or React Flow's fitView with these options. */
export type FitHow = "readable" | FitAllOptions;

/** A saved fit (JSON-parsed) as a FitHow, or null when it is none. */
export function asFit(how: unknown): FitHow | null {
  return how === "readable" || (how && typeof how === "object") ? how as FitHow : null;
}

/** This tab's autosave (lib/autosave.ts): one per page. */
let tabAutosave: TabAutosave | null = null;
export function tabSaves(): TabAutosave {
  tabAutosave ??= new TabAutosave(localStorage, sessionStorage);
  return tabAutosave;
}

/** How long an opened graph waits for its nodes to be measured before it is arranged (ms). */
const MEASURE_WAIT = 1500;

/**
 * A node's box in flow coordinates: its measured size, else (not rendered yet: out of view
 * in a large graph) its width and the height its rows will have, at least its saved height.
 */
function nodeRect(n: SfNode, defs: Defs): Rect {
  const width = n.measured?.width ?? n.width ?? NODE_WIDTH;
  let height = n.measured?.height;
  if (height === undefined) {
    const saved = n.data.size?.[1] ?? 0;
    if (n.type === "reroute") height = 18;
    else if (n.data.collapsed) height = 36;
    else if (n.type === "note") height = Math.max(saved, 100);
    else height = Math.max(saved, defs.get(n.data.type) ? estimateNodeHeight(defs.get(n.data.type)) : NODE_HEIGHT);
  }
  return { x: n.position.x, y: n.position.y, width, height };
}

/**
 * Nodes that grew (a preview, images or text appeared, a message, an expanded node): the
 * nodes below them that they now cover move down (lib/arrange.ts), so that a node never
 * grows over its neighbours. A size the user set (resizing) moves nothing.
 */
function makeRoom(before: SfNode[], changes: NodeChange<SfNode>[], after: SfNode[], defs: Defs): SfNode[] {
  const was = new Map(before.map((n) => [n.id, n]));
  const grown: string[] = [];
  for (const c of changes) {
    if (c.type !== "dimensions" || c.setAttributes || !c.dimensions) continue;
    const old = was.get(c.id);
    const h = old?.measured?.height;
    if (old && h !== undefined && !old.resizing && c.dimensions.height > h + 1) grown.push(c.id);
  }
  if (!grown.length) return after;
  const rects = new Map(after.map((n) => [n.id, nodeRect(n, defs)]));
  const fixed = new Set(after.filter((n) => n.data.pinned || n.dragging).map((n) => n.id));
  const moved = makeRoomBelow(rects, grown, fixed);
  return moved.size ? movedTo(after, moved) : after;
}

/** `nodes` with those in `moved` at their new top-left (whole pixels). */
function movedTo(nodes: SfNode[], moved: ReadonlyMap<string, { x: number; y: number }>): SfNode[] {
  return nodes.map((n) => {
    const p = moved.get(n.id);
    return p ? { ...n, position: { x: Math.round(p.x), y: Math.round(p.y) } } : n;
  });
}

export function useGraphStore(defs: Defs, store: RunStore, onAutosaveFail?: (message: string) => void) {
  const failRef = useRef(onAutosaveFail);
  failRef.current = onAutosaveFail;
  /** Whether the last autosave failed (the user is told once per run of failures). */
  const failing = useRef(false);
  const rf = useReactFlow<SfNode, SfEdge>();
  const [nodes, setNodes] = useState<SfNode[]>([]);
  const [edges, setEdges] = useState<SfEdge[]>([]);
  const [docName, setDocName] = useState("workflow");
  const docNameRef = useRef(docName);
  docNameRef.current = docName;
  /** The document's name now (for callbacks that must not re-render when it changes). */
  const docNameNow = useCallback(() => docNameRef.current, []);
  const meta = useRef<GraphMeta>({ extra: {} });
  const [groups, setGroupsState] = useState<GroupBox[]>([]);
  const groupsRef = useRef(groups);
  groupsRef.current = groups;
  /** Set while a group is dragged: its many small moves make one undo step. */
  const holdHistory = useRef(false);
  /** Set while an opened graph waits to be arranged: it is recorded (undo, autosave) once arranged. */
  const arranging = useRef(false);
  /** Counts opened graphs: an arrangement still waiting for a graph opened since gives up. */
  const opened = useRef(0);
  /** How many graphs were opened so far (loadGraph: every load path, undo and redo too). */
  const openedCount = useCallback(() => opened.current, []);
  /** The latest nodes and edges, for callbacks that must not re-render on every change. */
  const state = useRef({ nodes, edges });
  state.current = { nodes, edges };
  const defsRef = useRef(defs);
  defsRef.current = defs;
  const history = useRef<UndoHistory>({ past: [], present: null, future: [] });
  /** Whether the history has a step to undo / redo, for the toolbar's buttons (the history is a ref). */
  const [undoable, setUndoable] = useState({ undo: false, redo: false });
  const syncUndoable = useCallback(() => {
    const undo = history.current.past.length > 0;
    const redo = history.current.future.length > 0;
    setUndoable((was) => (was.undo === undo && was.redo === redo ? was : { undo, redo }));
  }, []);
  /**
   * The workflow-library file of the graph shown (Save writes over it without asking), kept
   * per undo step (lib/undo.ts StepFiles): an undo across an Open brings the file back with
   * the graph. `libraryFile` is it as state, for what shows it (the Workflows tab's mark).
   */
  const files = useRef(new StepFiles()).current;
  const [libraryFile, setLibraryFile] = useState<string | null>(null);
  const syncFile = useCallback(() => setLibraryFile(files.current), [files]);
  /** Make `key` the history's present (lib/undo.ts's recordStep), the buttons following. */
  const record = useCallback((key: string, amend: boolean, path?: string | null) => {
    recordStep(history.current, key, amend, UNDO_MAX);
    files.recorded(key, path);
    files.prune(history.current);
    syncUndoable();
  }, [syncUndoable, files]);
  /**
   * The steps that opened a whole graph (a file, an example, a history entry): an undo or
   * redo across one leaves the run's results behind, as they belong to the other graph (a
   * history entry's images stayed on the graph before it). Kept apart from the keys, which
   * are compared to tell an edit.
   */
  const openedSteps = useRef(new Set<string>());
  const markOpened = useCallback((key: string) => {
    const h = history.current;
    const kept = new Set([...h.past, ...h.future, h.present]);
    for (const k of openedSteps.current) if (!kept.has(k)) openedSteps.current.delete(k);
    openedSteps.current.add(key);
  }, []);
  /**
   * A node's box with the room its first run's preview or images will take (lib/layout.ts
   * resultRoom): where a new or pasted node must not go.
   */
  const occupied = useCallback((n: SfNode): Rect => {
    const r = nodeRect(n, defsRef.current);
    const run = store.getNode(n.id);
    const room = resultRoom(defsRef.current.get(n.data.type), r.width,
      { preview: !!(run.preview || run.sample), images: !!run.images?.length });
    return { ...r, height: r.height + room };
  }, [store]);
  /** The pending change is the canvas's own room-making move (see onNodesChange). */
  const autoLayout = useRef(false);
  /** The undo key last written to the autosave (an opened graph is history's present before it is saved). */
  const savedKey = useRef<string | null>(null);
  /** An opened graph waiting to be arranged, as opened: its arranged layout replaces it as history's present. */
  const loadedFlow = useRef<{ seq: number; nodes: SfNode[]; edges: SfEdge[]; extra: Record<string, unknown>; name: string } | null>(null);

  const currentGraph = useCallback((): Graph => {
    const { nodes, edges } = state.current;
    return flowToGraph(nodes, edges, { groups: groupsRef.current, extra: meta.current.extra, viewport: rf.getViewport() });
  }, [rf]);

  /** The document of `ns` (the current nodes by default) with the current links, and its undo key. */
  const documentNow = useCallback((ns: SfNode[] = state.current.nodes) => {
    const doc = graphToDocument(flowToGraph(ns, state.current.edges, { groups: groupsRef.current, extra: meta.current.extra }),
      defsRef.current);
    return { doc, key: undoKey(doc, docNameRef.current) };
  }, []);

  /**
   * Record an edit the debounce below has not settled yet, so that an undo pressed right
   * after an edit (a Like in the gallery, a typed value) undoes that edit, not the one before.
   */
  const settleNow = useCallback((ns: SfNode[] = state.current.nodes) => {
    const { key } = documentNow(ns);
    const h = history.current;
    if (h.present === null) {
      // the graph just opened and the debounce has not recorded it yet: it is the base
      h.present = key;
      files.recorded(key);
      return;
    }
    if (key === h.present) return;
    const amend = autoLayout.current;
    autoLayout.current = false;
    record(key, amend);
  }, [documentNow, record, files]);

  /**
   * Make `key` (a graph just opened, cleared) history's present, as one undo step after the
   * graph shown before (itself settled first: an edit typed just before stays its own step).
   * Without it the debounced record below was the opened graph's only way into the history,
   * and an edit made within its 200 ms replaced it: one Ctrl+Z then went back past the whole
   * opened workflow to the one before (the drill's lost dreambooth graph).
   */
  const recordOpened = useCallback((key: string, path: string | null) => {
    // (the first graph of the page, the restored or default one, is the base: no step back to an empty canvas)
    if (history.current.present !== null) settleNow(); // (an edit made just before: the old graph's file)
    autoLayout.current = false;
    record(key, false, path);
    markOpened(key);
    syncFile();
  }, [settleNow, record, markOpened, syncFile]);

  /** The last fit, redone when the canvas is resized while the view is still that fit (lib/viewfit.ts). */
  const fitTracker = useRef(new FitTracker<FitHow>()).current;

  /** Fit the graph (or the boxes `rects` of its nodes) at a readable zoom (lib/layout.ts); a large one shows its top-left part. */
  const fitRects = useCallback((rects?: Rect[]) => {
    const ns = rf.getNodes();
    const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
    if (!ns.length || !pane) return;
    const boxes = rects ?? ns.map((n) => ({
      x: n.position.x, y: n.position.y,
      // nodes not rendered yet (out of view) count at a typical size
      width: n.measured?.width ?? n.width ?? NODE_WIDTH, height: n.measured?.height ?? NODE_HEIGHT,
    }));
    const vp = fitViewport(boundsOf(boxes), pane.width, pane.height, boxes.length);
    fitTracker.fitted(vp, "readable");
    void rf.setViewport(vp);
  }, [rf, fitTracker]);
  const fit = useCallback(() => fitRects(), [fitRects]);

  /**
   * A fit of the whole graph (the fit button), remembered like `fit`. Computed here, at once:
   * React Flow's `fitView` is queued until every node is measured, so with nodes out of view
   * unrendered, or measured late, it landed later, over a view the user had moved since.
   */
  const fitAll = useCallback((options: FitAllOptions = {}) => {
    const ns = rf.getNodes().filter((n) => !n.hidden);
    const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
    if (!ns.length || !pane) return;
    const bounds = boundsOf(ns.map((n) => nodeRect(n, defsRef.current)));
    const vp = getViewportForBounds(bounds, pane.width, pane.height, options.minZoom ?? CANVAS_MIN_ZOOM,
      options.maxZoom ?? CANVAS_MAX_ZOOM, options.padding ?? 0.1);
    fitTracker.fitted(vp, options);
    void rf.setViewport(vp);
  }, [rf, fitTracker]);

  /** The canvas changed size: fit again if the view is still where the last fit left it. */
  const refit = useCallback(() => {
    const how = fitTracker.refit(rf.getViewport());
    if (how === "readable") fit();
    else if (how) fitAll(how);
  }, [rf, fitTracker, fit, fitAll]);

  /**
   * Call `then` once the nodes of the graph opened as `seq` are measured (or, a large graph
   * rendering only what is in view, once no more come, or after MEASURE_WAIT); not at all if
   * another graph was opened since. A fit made before would use guessed node sizes.
   */
  const whenMeasured = useCallback((seq: number, then: () => void) => {
    const began = performance.now();
    let measuredBefore = -1;
    let still = 0;
    const step = () => {
      if (seq !== opened.current) return; // another graph was opened since
      const ns = rf.getNodes();
      const measured = ns.filter((n) => n.measured?.height !== undefined).length;
      still = measured === measuredBefore ? still + 1 : 0;
      measuredBefore = measured;
      if (measured < ns.length && still < 4 && performance.now() - began < MEASURE_WAIT) {
        setTimeout(step, 40);
        return;
      }
      then();
    };
    setTimeout(step, 40);
  }, [rf]);

  /**
   * Arrange a graph just opened from a layout made for other node sizes (a ComfyUI file):
   * once its nodes are measured, those that now overlap are moved apart (lib/arrange.ts),
   * then the view is the file's own if it is readable and shows the graph, else a fit.
   */
  const arrange = useCallback((seq: number, saved: Viewport | undefined) => {
    whenMeasured(seq, () => {
      const ns = rf.getNodes();
      const rects = new Map(ns.map((n) => [n.id, nodeRect(n, defsRef.current)]));
      const placed = arrangeOpened(rects, groupsRef.current);
      arranging.current = false;
      // the opened graph's step is its arranged layout (no undo step back to the overlapping one)
      const base = loadedFlow.current;
      loadedFlow.current = null;
      if (base?.seq === seq) {
        const was = undoKey(graphToDocument(flowToGraph(base.nodes, base.edges, { groups: groupsRef.current, extra: base.extra }),
          defsRef.current), base.name);
        const h = history.current;
        if (h.present === was) {
          const moved = base.nodes.map((n) => {
            const p = placed.positions.get(n.id);
            return p && (p.x !== n.position.x || p.y !== n.position.y) ? { ...n, position: p } : n;
          });
          h.present = undoKey(graphToDocument(flowToGraph(moved, base.edges, { groups: placed.groups, extra: base.extra }),
            defsRef.current), base.name);
          files.recorded(h.present);
          markOpened(h.present);
        }
      }
      // a new array even when nothing moved: the opened graph is recorded now (undo, autosave)
      setNodes((cur) => cur.map((n) => {
        const p = placed.positions.get(n.id);
        return p && (p.x !== n.position.x || p.y !== n.position.y) ? { ...n, position: p } : { ...n };
      }));
      setGroupsState(placed.groups);
      const boxes = [...rects].map(([id, r]) => ({ ...r, ...placed.positions.get(id) }));
      const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
      if (saved && pane && keepsReadableView(saved, boundsOf(boxes), pane.width, pane.height, boxes.length)) {
        void rf.setViewport(saved);
      } else if (boxes.length) fitRects(boxes);
    });
  }, [rf, fitRects, whenMeasured, markOpened, files]);

  /**
   * The first visit's default graph must show whole in its first view (a small window, a
   * 150% page zoom: the readable fit showed its top-left part, Save Image cut off by the side
   * panel, where the first run's image appears): when some node is out of view, React Flow's
   * fit of all of it, below the readable zoom if need be (down to WHOLE_VIEW_ZOOM).
   */
  const fitWholeIfCut = useCallback(() => {
    const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
    const rects = rf.getNodes().map((n) => nodeRect(n, defsRef.current));
    if (!pane || !rects.length || showsAll(rf.getViewport(), rects, pane.width, pane.height)) return;
    fitAll({ padding: FIT_MARGIN, minZoom: WHOLE_VIEW_ZOOM, maxZoom: FIT_MAX_ZOOM });
  }, [rf, fitAll]);

  /**
   * A document's own view, kept as ComfyUI keeps a workflow's saved view, unless it shows none
   * of the graph (saved looking at empty canvas, or for a much larger window): then a fit.
   * `firstView` (the first visit's default graph): kept only if it shows all of the graph.
   */
  const checkSavedView = useCallback((seq: number, saved: Viewport, firstView = false) => {
    whenMeasured(seq, () => {
      const pane = document.querySelector(".react-flow")?.getBoundingClientRect();
      if (!pane || !sameViewport(rf.getViewport(), saved)) return; // the view was moved since
      const rects = rf.getNodes().map((n) => nodeRect(n, defsRef.current));
      if (!rects.length) return;
      if (firstView) {
        if (!showsAll(saved, rects, pane.width, pane.height)) {
          fit();
          fitWholeIfCut();
        }
      } else if (!showsAny(saved, rects, pane.width, pane.height)) fit();
    });
  }, [rf, fit, whenMeasured, fitWholeIfCut]);

  /**
   * Open `graph`. Its own viewport, if it has one, is kept (`fitted`: that viewport was a
   * fit, which a resize redoes); without one the graph is fitted. `viewport: false` leaves
   * the view as it is (undo, redo). `arrange`: the layout was made for other node sizes
   * (ComfyUI's): overlapping nodes are moved apart, and its viewport is kept only when
   * readable (`arrange` above). `name`: the document's name from now on. `record: false`
   * (undo, redo) leaves the history as it is; otherwise the graph is an undo step of its
   * own at once (`recordOpened`). `firstView`: the first view of the first visit's default
   * graph, which must show all of it (`fitWhole`). `library`: the workflow-library file it
   * was opened from (none when left out; an undo or redo brings back its step's own).
   */
  const loadGraph = useCallback((graph: Graph, opts: {
    viewport?: boolean; resetRun?: boolean; fitted?: FitHow | null; arrange?: boolean; name?: string;
    record?: boolean; firstView?: boolean; library?: string | null;
  } = {}) => {
    if (opts.record !== false && state.current.nodes.length) {
      // the graph shown until now stays at hand (History → Graphs replaced): undo brings
      // it back only until a reload, and an unsaved graph was then lost for good; not an
      // opened graph nobody edited (an example visited), which is where it came from
      const h = history.current;
      const now = documentNow();
      const untouched = h.present !== null && openedSteps.current.has(h.present) && now.key === h.present;
      try {
        const kept = untouched ? "known" : keepReplaced(localStorage, JSON.stringify(now.doc), docNameRef.current);
        if (kept === "too-large" || kept === "no-room") {
          failRef.current?.("The graph just replaced is too large to keep in the browser: Ctrl+Z brings it back "
            + "until the page is reloaded (save it with Ctrl+S to keep it)");
        }
      } catch {
        // no storage: undo still has it
      }
    }
    const flow = graphToFlow(graph, defsRef.current);
    const seq = ++opened.current;
    arranging.current = !!opts.arrange && flow.nodes.length > 0;
    const groups = parseGroups(graph.groups);
    const extra = graph.extra ?? {};
    if (opts.record !== false) {
      const name = opts.name ?? docNameRef.current;
      recordOpened(undoKey(graphToDocument(flowToGraph(flow.nodes, flow.edges, { groups, extra }), defsRef.current), name),
        opts.library ?? null);
      if (arranging.current) loadedFlow.current = { seq, nodes: flow.nodes, edges: flow.edges, extra, name };
    }
    if (opts.name !== undefined) {
      docNameRef.current = opts.name;
      setDocName(opts.name);
    }
    meta.current = { extra };
    setGroupsState(groups);
    setNodes(flow.nodes);
    setEdges(flow.edges);
    if (opts.resetRun !== false) store.reset();
    if (opts.viewport !== false) {
      fitTracker.forget(); // until this graph's own fit
      if (graph.viewport) {
        rf.setViewport(graph.viewport);
        if (opts.fitted) fitTracker.fitted(graph.viewport, opts.fitted);
        if (flow.nodes.length && !arranging.current) checkSavedView(seq, graph.viewport, !!opts.firstView);
      } else if (flow.nodes.length && !arranging.current) {
        // as ComfyUI fits on load; not if the view was moved meanwhile (a pan, a zoom)
        const before = rf.getViewport();
        whenMeasured(seq, () => {
          if (!sameViewport(rf.getViewport(), before)) return;
          fit();
          if (opts.firstView) fitWholeIfCut();
        });
      }
    }
    if (arranging.current) arrange(seq, opts.viewport !== false ? graph.viewport : undefined);
  }, [rf, store, fit, fitTracker, arrange, whenMeasured, checkSavedView, recordOpened, fitWholeIfCut, documentNow]);

  const writeAutosave = useCallback((doc?: WorkflowDocument, name: string = docName) => {
    try {
      const d = doc ?? graphToDocument(currentGraph(), defsRef.current);
      const viewport = rf.getViewport();
      d.layout.viewport = viewport;
      const how = fitTracker.refit(viewport);
      const res = tabSaves().save(JSON.stringify({ ...d, extra: { ...d.extra, name } }), how ?? null, name);
      if (!res.ok && !failing.current) {
        failRef.current?.(`Autosave failed: the browser's storage is full or refused it (${res.error}). Save the workflow (Ctrl+S) to keep it.`);
      }
      failing.current = !res.ok;
    } catch (e) {
      // storage unavailable
      if (!failing.current) failRef.current?.(`Autosave failed: ${(e as Error).message}. Save the workflow (Ctrl+S) to keep it.`);
      failing.current = true;
    }
  }, [currentGraph, rf, docName, fitTracker]);

  // One undo step and one autosave per settled change (not per drag frame).
  useEffect(() => {
    if (holdHistory.current || arranging.current || nodes.some((n) => n.dragging || n.resizing)) return;
    const timer = setTimeout(() => {
      const doc = graphToDocument(flowToGraph(nodes, edges, { groups, extra: meta.current.extra }), defsRef.current);
      const key = undoKey(doc, docName);
      const h = history.current;
      if (key === h.present && key === savedKey.current) return; // selection or measurement only
      if (key !== h.present) {
        const amend = autoLayout.current;
        autoLayout.current = false;
        record(key, amend);
      }
      // an opened graph is history's present already (loadGraph): it is saved here
      savedKey.current = key;
      writeAutosave(doc);
    }, 200);
    return () => clearTimeout(timer);
  }, [nodes, edges, groups, docName, writeAutosave, record]);

  /**
   * Write now an edit the debounce above has not saved yet (the tab is being closed or
   * reloaded within its 200 ms): nothing when the autosave already holds the graph, so a
   * tab closed untouched does not become the newest graph other tabs open.
   */
  const flushAutosave = useCallback(() => {
    if (holdHistory.current || arranging.current) return;
    const { doc, key } = documentNow();
    if (key === savedKey.current) return;
    settleNow();
    savedKey.current = key;
    writeAutosave(doc, docNameRef.current);
  }, [documentNow, settleNow, writeAutosave]);

  /**
   * After an undo or redo that kept the run's results: a layout from before a node grew (its
   * preview, images or text came later) would have it cover the nodes below it, so they move
   * down as when it grew (`makeRoom`), amending the restored step rather than adding one.
   */
  const roomForResults = useCallback((seq: number) => {
    whenMeasured(seq, () => {
      const ns = rf.getNodes();
      const grown = ns.filter((n) => {
        const run = store.getNode(n.id);
        return !!(run.preview || run.sample || run.images?.length || run.text?.length);
      }).map((n) => n.id);
      if (!grown.length) return;
      const rects = new Map(ns.map((n) => [n.id, nodeRect(n, defsRef.current)]));
      const moved = makeRoomBelow(rects, grown, new Set(ns.filter((n) => n.data.pinned).map((n) => n.id)));
      if (!moved.size) return;
      autoLayout.current = true;
      setNodes((cur) => movedTo(cur, moved));
    });
  }, [rf, store, whenMeasured]);

  /** Undo / redo: open the document `key` in place; `from` is the one shown until now. */
  const restoreKey = useCallback((key: string, from: string, acrossOpen: boolean) => {
    const { doc, name } = readUndoKey(key);
    loadGraph(documentToGraph(doc, defsRef.current).graph, { viewport: false, resetRun: acrossOpen, record: false, name });
    if (files.shown(key)) syncFile(); // the file the graph came from comes back with it
    if (!acrossOpen) roomForResults(opened.current);
    writeAutosave(doc as unknown as WorkflowDocument, name);
    // the last run's messages about the values and links this step put back go with them
    for (const [id, input] of changedInputs(readUndoKey(from).doc.prompt ?? {}, doc.prompt ?? {})) store.clearInputErrors(id, input);
  }, [loadGraph, roomForResults, writeAutosave, store, files, syncFile]);

  const undo = useCallback(() => {
    settleNow();
    const h = history.current;
    const prev = h.past.pop();
    if (prev === undefined || h.present === null) return;
    const from = h.present;
    h.future.push(from);
    h.present = prev;
    restoreKey(prev, from, openedSteps.current.has(from));
    syncUndoable();
  }, [restoreKey, settleNow, syncUndoable]);

  const redo = useCallback(() => {
    settleNow();
    const h = history.current;
    const next = h.future.pop();
    if (next === undefined || h.present === null) return;
    const from = h.present;
    h.past.push(from);
    h.present = next;
    restoreKey(next, from, openedSteps.current.has(next));
    syncUndoable();
  }, [restoreKey, settleNow, syncUndoable]);

  /**
   * The library file of the graph shown: `set` it saved as `path` (the steps since it was
   * opened too), `moved`: a file renamed (or deleted: null), every step of it following.
   */
  const library = useMemo(() => ({
    current: () => files.current,
    set(path: string | null) {
      settleNow(); // an edit not yet recorded is a step of this file's
      files.set(path, segmentOf(history.current, openedSteps.current));
      syncFile();
    },
    moved(from: string, to: string | null) {
      files.moved(from, to);
      syncFile();
    },
  }), [files, settleNow, syncFile]);

  /** Edit the groups (saved and undoable like any other edit). */
  const setGroups = useCallback((fn: (groups: GroupBox[]) => GroupBox[]) => setGroupsState(fn), []);

  const patchNode = useCallback((id: string, fn: (n: SfNode) => SfNode) => {
    setNodes((ns) => ns.map((n) => (n.id === id ? fn(n) : n)));
  }, []);

  const onNodesChange = useCallback((changes: NodeChange<SfNode>[]) => {
    setNodes((ns) => {
      // a deletion right after an edit the debounce has not settled (a value typed, then
      // Delete within 200 ms) is a step of its own: one Ctrl+Z must not undo both
      if (changes.some((c) => c.type === "remove") && !holdHistory.current && !arranging.current) settleNow(ns);
      const applied = applyNodeChanges(changes, ns);
      const next = makeRoom(ns, changes, applied, defsRef.current);
      // a node grew by itself (a preview appeared) and pushed others down: not an edit of
      // the user's, so the next history record amends the present step instead of adding one
      if (next !== applied && changes.every((c) => c.type === "dimensions" && !c.setAttributes)) {
        // an edit made just before (not yet settled by the debounce) is its own step first:
        // else the move's amend would fold it into the step before (one Ctrl+Z, two edits)
        if (!holdHistory.current && !arranging.current) settleNow(ns);
        autoLayout.current = true;
      }
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
  }, [settleNow]);
  const onEdgesChange = useCallback((changes: EdgeChange<SfEdge>[]) => {
    // a link deleted right after an unsettled edit: its own step, as a node's deletion
    if (changes.some((c) => c.type === "remove") && !holdHistory.current && !arranging.current) settleNow();
    setEdges((es) => applyEdgeChanges(changes, es));
  }, [settleNow]);

  return {
    nodes, edges, setNodes, setEdges, state, meta, store, defsRef, docName, docNameNow, setDocName, groups, setGroups, holdHistory,
    currentGraph, occupied, loadGraph, library, libraryFile, openedCount, fit, fitAll, refit, writeAutosave, flushAutosave, undo, redo, canUndo: undoable.undo, canRedo: undoable.redo, patchNode, onNodesChange, onEdgesChange, settleNow,
  };
}
