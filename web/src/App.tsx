import {
  Background, BackgroundVariant, type Connection, Controls, type Edge, type EdgeChange, type FinalConnectionState,
  type NodeChange, ReactFlow, ReactFlowProvider, applyEdgeChanges, applyNodeChanges, useReactFlow, useStore,
} from "@xyflow/react";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import {
  ApiError, convertWorkflow, getObjectInfo, getWorkflow, interrupt, listWorkflows, makeClientId, queuePrompt, Socket,
  uploadImage,
  viewUrl, type ExampleRef,
} from "./api";
import { EditorContext, type EditorApi, useGlobalRun } from "./canvas/context";
import {
  edgeToLink, flowToGraph, graphToFlow, inHandle, inputOf, type SfEdge, type SfNode as SfFlowNode,
  slotOf, toFlowEdge, toFlowNode,
} from "./canvas/flow";
import { Palette, type PaletteFilter } from "./canvas/Palette";
import { SfNode } from "./canvas/SfNode";
import {
  createNode, documentToGraph, emptyGraph, type Graph, type GraphLink, type GraphNode, graphToDocument, nextNodeId,
  type NodeMode,
  pasteNodes, type WorkflowDocument,
} from "./lib/graph";
import { applyFeedbackOps, BATCH_TYPE, FABRIC_TYPE, type FeedbackKind, feedbackState, type FeedbackState, toggleFeedback } from "./lib/feedback";
import { type Loaded, loadWorkflowBytes, loadWorkflowObject, loadWorkflowPng } from "./lib/load";
import { type ImageRef, type NodeErrors, RunStore } from "./lib/runstore";
import { type ControlMode, type Defs, nextControlValue, parseObjectInfo } from "./lib/schema";
import { checkConnection, type GraphView, nodesAcceptingType, nodesProducingType } from "./lib/types";
import { type FeedbackView, SidePanel } from "./panels/SidePanel";

const AUTOSAVE_KEY = "steerflow.autosave";
const DEFAULT_WORKFLOW = "txt2img.json";
const CLIPBOARD_KEY = "steerflow.clipboard";
const nodeTypes = { sf: SfNode };
const params = new URLSearchParams(window.location.search);
// Mount only the nodes in view (measured by bench/bench_canvas.py: panning a
// 300-node graph at zoom 1 keeps 60 fps this way); ?visibleOnly=0 mounts all.
const ONLY_VISIBLE = params.get("visibleOnly") !== "0";
/** Below this zoom, widgets are not painted (text is unreadable there anyway). */
const LOD_ZOOM = 0.5;
const lowDetail = (s: { transform: [number, number, number] }) => s.transform[2] < LOD_ZOOM;

type Toast = { id: number; kind: "info" | "warning" | "error"; text: string };

type PendingLink = { node: string; from: "source" | "target"; slot?: number; input?: string; type: string };

type PaletteState = {
  screen?: { x: number; y: number };
  flow: { x: number; y: number };
  filter?: PaletteFilter;
  pending?: PendingLink;
};

declare global {
  interface Window {
    steerflow?: {
      getDocument(): WorkflowDocument;
      loadDocument(doc: unknown): void;
      setViewport(vp: { x: number; y: number; zoom: number }): void;
      fitView(): void;
      store: RunStore;
      ready: boolean;
    };
  }
}

function downloadJson(name: string, obj: unknown): void {
  const blob = new Blob([JSON.stringify(obj, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name.endsWith(".json") ? name : `${name}.json`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function isEditable(target: EventTarget | null): boolean {
  const el = target as HTMLElement | null;
  if (!el) return false;
  const tag = el.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable;
}

function StatusBar({ store }: { store: RunStore }) {
  const { connected, running, executing, queueRemaining, lastError } = useGlobalRun(store);
  return (
    <div className="sf-status" data-testid="status">
      <span className={`sf-dot ${connected ? "on" : "off"}`} title={connected ? "connected" : "disconnected"} />
      {connected ? "connected" : "disconnected"}
      {" · "}queue {queueRemaining}
      {running && <> · running{executing ? ` node ${executing}` : ""}</>}
      {lastError && <span className="sf-status-error" title={lastError}> · {lastError}</span>}
    </div>
  );
}

function Editor({ defs, refreshDefs }: { defs: Defs; refreshDefs(): void }) {
  const rf = useReactFlow<SfFlowNode, SfEdge>();
  const store = useMemo(() => new RunStore(), []);
  const [nodes, setNodes] = useState<SfFlowNode[]>([]);
  const [edges, setEdges] = useState<SfEdge[]>([]);
  const [toasts, setToasts] = useState<Toast[]>([]);
  const [palette, setPalette] = useState<PaletteState | null>(null);
  const [lightbox, setLightbox] = useState<ImageRef | null>(null);
  const [examples, setExamples] = useState<ExampleRef[] | null>(null);
  const [docName, setDocName] = useState("workflow");
  const [busy, setBusy] = useState(false);
  const meta = useRef<{ groups: unknown[]; extra: Record<string, unknown> }>({ groups: [], extra: {} });
  const state = useRef({ nodes, edges });
  state.current = { nodes, edges };
  const defsRef = useRef(defs);
  defsRef.current = defs;
  const mouse = useRef<{ x: number; y: number } | null>(null);
  const history = useRef<{ past: string[]; present: string | null; future: string[] }>({ past: [], present: null, future: [] });
  const fileInput = useRef<HTMLInputElement>(null);
  const socket = useRef<Socket | null>(null);
  const toastId = useRef(0);
  const lod = useStore(lowDetail);

  const notify = useCallback((text: string, kind: Toast["kind"] = "info") => {
    const id = ++toastId.current;
    setToasts((t) => [...t.slice(-4), { id, kind, text }]);
    setTimeout(() => setToasts((t) => t.filter((x) => x.id !== id)), kind === "info" ? 4000 : 9000);
  }, []);

  // --- websocket ---------------------------------------------------------------------
  useEffect(() => {
    const s = new Socket(makeClientId(), store, () => store.bumpQueue());
    socket.current = s;
    s.open();
    return () => s.close();
  }, [store]);

  // --- graph in and out --------------------------------------------------------------
  const currentGraph = useCallback((): Graph => {
    const { nodes, edges } = state.current;
    return flowToGraph(nodes, edges, { ...meta.current, viewport: rf.getViewport() });
  }, [rf]);

  const loadGraph = useCallback((graph: Graph, opts: { viewport?: boolean; resetRun?: boolean } = {}) => {
    const flow = graphToFlow(graph, defsRef.current);
    meta.current = { groups: graph.groups ?? [], extra: graph.extra ?? {} };
    setNodes(flow.nodes);
    setEdges(flow.edges);
    if (opts.resetRun !== false) store.reset();
    if (opts.viewport !== false) {
      if (graph.viewport) rf.setViewport(graph.viewport);
      else if (flow.nodes.length) setTimeout(() => rf.fitView({ padding: 0.15, maxZoom: 1 }), 60);
    }
  }, [rf, store]);

  const applyLoaded = useCallback((loaded: Loaded, name?: string) => {
    loadGraph(loaded.graph);
    if (name) setDocName(name.replace(/\.(json|png)$/i, ""));
    const n = loaded.graph.nodes.length;
    notify(`Opened ${name ?? "workflow"} (${n} node${n === 1 ? "" : "s"}${loaded.kind === "comfyui" ? ", from ComfyUI" : ""})`);
    for (const w of loaded.warnings.slice(0, 3)) notify(w, "warning");
  }, [loadGraph, notify]);

  const loadObject = useCallback(async (obj: unknown, name?: string) => {
    try {
      applyLoaded(await loadWorkflowObject(obj, defsRef.current, convertWorkflow), name);
    } catch (e) {
      notify(`Cannot open ${name ?? "workflow"}: ${(e as Error).message}`, "error");
    }
  }, [applyLoaded, notify]);

  const loadFile = useCallback(async (file: File) => {
    try {
      const bytes = new Uint8Array(await file.arrayBuffer());
      applyLoaded(await loadWorkflowBytes(file.name, bytes, defsRef.current, convertWorkflow), file.name);
    } catch (e) {
      notify(`Cannot open ${file.name}: ${(e as Error).message}`, "error");
    }
  }, [applyLoaded, notify]);

  // --- autosave and undo history -------------------------------------------------------
  const writeAutosave = useCallback((doc?: WorkflowDocument) => {
    try {
      const d = doc ?? graphToDocument(currentGraph(), defsRef.current);
      d.layout.viewport = rf.getViewport();
      localStorage.setItem(AUTOSAVE_KEY, JSON.stringify({ ...d, extra: { ...d.extra, name: docName } }));
    } catch {
      // storage full or unavailable: nothing to do
    }
  }, [currentGraph, rf, docName]);

  useEffect(() => {
    if (nodes.some((n) => n.dragging)) return;
    const timer = setTimeout(() => {
      const graph = flowToGraph(nodes, edges, meta.current);
      const doc = graphToDocument(graph, defsRef.current);
      const key = JSON.stringify(doc);
      const h = history.current;
      if (key === h.present) return; // selection or measurement only
      if (h.present !== null) {
        h.past.push(h.present);
        if (h.past.length > 200) h.past.shift();
        h.future = [];
      }
      h.present = key;
      writeAutosave(doc);
    }, 200);
    return () => clearTimeout(timer);
  }, [nodes, edges, writeAutosave]);

  const restoreKey = useCallback((key: string) => {
    const doc = JSON.parse(key);
    loadGraph(documentToGraph(doc, defsRef.current).graph, { viewport: false, resetRun: false });
    writeAutosave(doc);
  }, [loadGraph, writeAutosave]);

  const undo = useCallback(() => {
    const h = history.current;
    const prev = h.past.pop();
    if (prev === undefined || h.present === null) return;
    h.future.push(h.present);
    h.present = prev;
    restoreKey(prev);
  }, [restoreKey]);

  const redo = useCallback(() => {
    const h = history.current;
    const next = h.future.pop();
    if (next === undefined || h.present === null) return;
    h.past.push(h.present);
    h.present = next;
    restoreKey(next);
  }, [restoreKey]);

  // Restore the last session's graph once.
  useEffect(() => {
    const saved = localStorage.getItem(AUTOSAVE_KEY);
    if (!saved) {
      // A first visit opens the default text-to-image graph, ready to queue.
      getWorkflow(DEFAULT_WORKFLOW)
        .then((doc) => loadObject(doc, DEFAULT_WORKFLOW))
        .catch(() => { /* no examples on this server: start empty */ });
      return;
    }
    try {
      const doc = JSON.parse(saved);
      const { graph } = documentToGraph(doc, defsRef.current);
      if (typeof doc?.extra?.name === "string") setDocName(doc.extra.name);
      delete graph.extra?.name;
      loadGraph(graph);
    } catch {
      localStorage.removeItem(AUTOSAVE_KEY);
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  // --- node edits ------------------------------------------------------------------------
  const patchNode = useCallback((id: string, fn: (n: SfFlowNode) => SfFlowNode) => {
    setNodes((ns) => ns.map((n) => (n.id === id ? fn(n) : n)));
  }, []);

  const api: EditorApi = useMemo(() => ({
    defs,
    store,
    setValue: (id, name, value) =>
      patchNode(id, (n) => ({ ...n, data: { ...n.data, values: { ...n.data.values, [name]: value } } })),
    setTitle: (id, title) => patchNode(id, (n) => ({ ...n, data: { ...n.data, title } })),
    setControl: (id, name, mode) =>
      patchNode(id, (n) => ({ ...n, data: { ...n.data, control: { ...n.data.control, [name]: mode } } })),
    upload: async (id, name, file) => {
      const value = await uploadImage(file);
      patchNode(id, (n) => ({ ...n, data: { ...n.data, values: { ...n.data.values, [name]: value } } }));
      refreshDefs();
    },
    openImage: (img) => setLightbox(img),
  }), [defs, store, patchNode, refreshDefs]);

  // --- FABRIC feedback from the gallery (logic in lib/feedback.ts) -----------------------
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
    // One ordinary edit (one undo step, autosaved): the nodes and links after the ops.
    const next = applyFeedbackOps(graph, edit.ops);
    const byId = new Map(next.nodes.map((n) => [n.id, n]));
    const added = next.nodes.filter((n) => !state.current.nodes.some((m) => m.id === n.id));
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
  }, [currentGraph, notify]);

  const feedback: FeedbackView | null = useMemo(() => {
    if (!feedbackKey) return null;
    const [target, liked, disliked] = JSON.parse(feedbackKey) as [string | null, string[], string[]];
    if (!target) return null;
    const st: FeedbackState = { target, liked: new Set(liked), disliked: new Set(disliked) };
    return { state: st, toggle: toggleImageFeedback };
  }, [feedbackKey, toggleImageFeedback]);

  const onNodesChange = useCallback((changes: NodeChange<SfFlowNode>[]) => {
    setNodes((ns) => applyNodeChanges(changes, ns));
  }, []);
  const onEdgesChange = useCallback((changes: EdgeChange<SfEdge>[]) => {
    setEdges((es) => applyEdgeChanges(changes, es));
  }, []);

  const graphView = useCallback((): GraphView => ({
    nodeType: (id) => state.current.nodes.find((n) => n.id === id)?.data.type,
    links: state.current.edges.map(edgeToLink),
  }), []);

  const linkOf = (c: Connection | Edge): GraphLink => ({
    source: c.source, slot: slotOf(c.sourceHandle), target: c.target, input: inputOf(c.targetHandle),
  });

  const isValidConnection = useCallback(
    (c: Connection | Edge) => checkConnection(graphView(), defsRef.current, linkOf(c)).ok,
    [graphView],
  );

  const connect = useCallback((link: GraphLink): boolean => {
    const check = checkConnection(graphView(), defsRef.current, link);
    if (!check.ok) {
      notify(`Link refused: ${check.reason}`, "error");
      return false;
    }
    const srcType = state.current.nodes.find((n) => n.id === link.source)?.data.type;
    const edge = toFlowEdge(link, defsRef.current, srcType);
    setEdges((es) => [
      ...es.filter((e) => !(e.target === link.target && e.targetHandle === inHandle(link.input))),
      edge,
    ]);
    return true;
  }, [graphView, notify]);

  const onConnect = useCallback((c: Connection) => {
    connect(linkOf(c));
  }, [connect]);

  const onConnectEnd = useCallback((event: MouseEvent | TouchEvent, cs: FinalConnectionState) => {
    if (cs.isValid || !cs.fromHandle || !cs.fromNode) return;
    const from = cs.fromHandle;
    const fromDef = defsRef.current.get((cs.fromNode.data as SfFlowNode["data"]).type);
    if (cs.toHandle) {
      // Dropped on a handle that refused the link: say why.
      const to = cs.toHandle;
      if (to.type === from.type) {
        notify(`Link refused: connect an output to an input`, "error");
        return;
      }
      const src = from.type === "source" ? from : to;
      const dst = from.type === "source" ? to : from;
      const check = checkConnection(graphView(), defsRef.current, {
        source: src.nodeId, slot: slotOf(src.id), target: dst.nodeId, input: inputOf(dst.id),
      });
      notify(`Link refused: ${check.ok ? "not allowed" : check.reason}`, "error");
      return;
    }
    if (!fromDef) return;
    const point = "changedTouches" in event ? event.changedTouches[0] : event;
    const target = document.elementFromPoint(point.clientX, point.clientY);
    if (!target?.closest(".react-flow__pane")) return;
    const flow = rf.screenToFlowPosition({ x: point.clientX, y: point.clientY });
    let pending: PendingLink;
    let types: Map<string, string>;
    if (from.type === "source") {
      const slot = slotOf(from.id);
      const type = fromDef.outputs[slot]?.type ?? "*";
      pending = { node: from.nodeId, from: "source", slot, type };
      types = new Map(nodesAcceptingType(defsRef.current, type).map((c) => [c.type, c.input!]));
    } else {
      const input = inputOf(from.id);
      const type = fromDef.inputs.find((i) => i.name === input)?.type ?? "*";
      pending = { node: from.nodeId, from: "target", input, type };
      types = new Map(nodesProducingType(defsRef.current, type).map((c) => {
        const d = defsRef.current.get(c.type)!;
        return [c.type, d.outputs[c.slot!].name];
      }));
    }
    setPalette({
      screen: { x: point.clientX, y: point.clientY },
      flow,
      pending,
      filter: { label: `${pending.from === "source" ? "an output" : "an input"} of type ${pending.type}`, types },
    });
  }, [graphView, notify, rf]);

  const addNode = useCallback((type: string, pos: { x: number; y: number }): string => {
    const id = nextNodeId(state.current.nodes.map((n) => n.id));
    const node = toFlowNode(createNode(defsRef.current, type, id, [pos.x, pos.y]));
    node.selected = true;
    const next = [...state.current.nodes.map((n) => (n.selected ? { ...n, selected: false } : n)), node];
    state.current = { ...state.current, nodes: next };
    setNodes(next);
    return id;
  }, []);

  const pick = useCallback((type: string) => {
    const p = palette;
    setPalette(null);
    if (!p) return;
    const id = addNode(type, p.flow);
    const pending = p.pending;
    if (!pending) return;
    const def = defsRef.current.get(type)!;
    if (pending.from === "source") {
      const input = p.filter?.types.get(type);
      if (input) connect({ source: pending.node, slot: pending.slot!, target: id, input });
    } else {
      const slot = nodesProducingType(new Map([[type, def]]), pending.type)[0]?.slot;
      if (slot !== undefined) connect({ source: id, slot, target: pending.node, input: pending.input! });
    }
  }, [palette, addNode, connect]);

  const openPaletteCentered = useCallback(() => {
    const rect = document.querySelector(".react-flow")?.getBoundingClientRect();
    const cx = rect ? rect.left + rect.width / 2 : window.innerWidth / 2;
    const cy = rect ? rect.top + rect.height / 2 : window.innerHeight / 2;
    setPalette({ flow: mouse.current ?? rf.screenToFlowPosition({ x: cx - 130, y: cy - 80 }) });
  }, [rf]);

  // --- copy / paste / delete -----------------------------------------------------------
  const copy = useCallback(() => {
    const graph = currentGraph();
    const ids = new Set(state.current.nodes.filter((n) => n.selected).map((n) => n.id));
    if (!ids.size) return;
    const clip = {
      nodes: graph.nodes.filter((n) => ids.has(n.id)),
      links: graph.links.filter((l) => ids.has(l.source) && ids.has(l.target)),
    };
    localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(clip));
    notify(`Copied ${ids.size} node${ids.size === 1 ? "" : "s"}`);
  }, [currentGraph, notify]);

  const paste = useCallback(() => {
    const raw = localStorage.getItem(CLIPBOARD_KEY);
    if (!raw) return;
    let clip: { nodes: GraphNode[]; links: GraphLink[] };
    try {
      clip = JSON.parse(raw);
    } catch {
      return;
    }
    if (!clip.nodes?.length) return;
    const minX = Math.min(...clip.nodes.map((n) => n.pos[0]));
    const minY = Math.min(...clip.nodes.map((n) => n.pos[1]));
    const at = mouse.current;
    const offset: [number, number] = at ? [at.x - minX, at.y - minY] : [40, 40];
    const graph = currentGraph();
    const { graph: next, ids } = pasteNodes(graph, clip, offset);
    const selected = new Set(ids);
    const flow = graphToFlow(next, defsRef.current);
    // keep the existing nodes' objects (measured sizes) and select the pasted ones
    const byId = new Map(state.current.nodes.map((n) => [n.id, n]));
    setNodes(flow.nodes.map((n) => (byId.has(n.id) ? { ...byId.get(n.id)!, selected: false } : { ...n, selected: selected.has(n.id) })));
    setEdges(flow.edges);
  }, [currentGraph]);

  const selectAll = useCallback(() => setNodes((ns) => ns.map((n) => ({ ...n, selected: true }))), []);

  // --- run -----------------------------------------------------------------------------------
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
  }, []);

  const queue = useCallback(async () => {
    const graph = currentGraph();
    if (!graph.nodes.length) {
      notify("Nothing to queue: add nodes first", "error");
      return;
    }
    store.clearErrors();
    const doc = graphToDocument(graph, defsRef.current);
    setBusy(true);
    try {
      const res = await queuePrompt(doc.prompt, socket.current?.clientId ?? makeClientId(), doc);
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
  }, [currentGraph, notify, store, applyControlAfterGenerate]);

  const save = useCallback(() => {
    downloadJson(docName || "workflow", graphToDocument(currentGraph(), defsRef.current));
  }, [currentGraph, docName]);

  const clear = useCallback(() => {
    loadGraph(emptyGraph());
    setDocName("workflow");
  }, [loadGraph]);

  /** Mute or bypass the selected nodes; on nodes already in that mode, make them run again. */
  const toggleMode = useCallback((mode: NodeMode) => {
    setNodes((ns) => {
      const selected = ns.filter((n) => n.selected);
      const off = selected.length > 0 && selected.every((n) => n.data.mode === mode);
      return ns.map((n) => {
        if (!n.selected) return n;
        const data = { ...n.data };
        if (off) delete data.mode;
        else data.mode = mode;
        return { ...n, data };
      });
    });
  }, []);

  // --- keyboard ----------------------------------------------------------------------------
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const mod = e.ctrlKey || e.metaKey;
      if (mod && e.key === "Enter") {
        e.preventDefault();
        void queue();
        return;
      }
      if (mod && e.key.toLowerCase() === "s") {
        e.preventDefault();
        save();
        return;
      }
      if (mod && e.key.toLowerCase() === "o") {
        e.preventDefault();
        fileInput.current?.click();
        return;
      }
      if (isEditable(e.target) || palette) return;
      const k = e.key.toLowerCase();
      if (mod && k === "z" && !e.shiftKey) {
        e.preventDefault();
        undo();
      } else if (mod && (k === "y" || (k === "z" && e.shiftKey))) {
        e.preventDefault();
        redo();
      } else if (mod && k === "c") {
        copy();
      } else if (mod && k === "v") {
        e.preventDefault();
        paste();
      } else if (mod && k === "a") {
        e.preventDefault();
        selectAll();
      } else if (mod && (k === "m" || k === "b")) {
        e.preventDefault(); // ComfyUI's keys: Ctrl+M mutes, Ctrl+B bypasses the selection
        toggleMode(k === "m" ? "muted" : "bypass");
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [queue, save, undo, redo, copy, paste, selectAll, toggleMode, palette]);

  // --- test and benchmark hooks ----------------------------------------------------------
  useEffect(() => {
    window.steerflow = {
      getDocument: () => graphToDocument(currentGraph(), defsRef.current),
      loadDocument: (doc: unknown) => loadObject(doc, "document"),
      setViewport: (vp) => void rf.setViewport(vp),
      fitView: () => void rf.fitView({ padding: 0.05 }),
      store,
      ready: true,
    };
  }, [currentGraph, loadObject, store, rf]);

  const openExamples = useCallback(async () => {
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

  const openExample = useCallback(async (ex: ExampleRef) => {
    setExamples(null);
    try {
      loadObject(await getWorkflow(ex.name), ex.name);
    } catch (e) {
      notify(`Cannot open ${ex.name}: ${(e as Error).message}`, "error");
    }
  }, [loadObject, notify]);

  const openLightboxWorkflow = useCallback(async (img: ImageRef) => {
    try {
      const res = await fetch(viewUrl(img));
      const bytes = new Uint8Array(await res.arrayBuffer());
      applyLoaded(await loadWorkflowPng(bytes, defsRef.current, convertWorkflow), img.filename);
      setLightbox(null);
    } catch (e) {
      notify(`Cannot open the image's workflow: ${(e as Error).message}`, "error");
    }
  }, [applyLoaded, notify]);

  return (
    <EditorContext.Provider value={api}>
      <div className="sf-app">
        <header className="sf-toolbar">
          <strong className="sf-brand">Steerflow</strong>
          <button type="button" className="sf-primary" onClick={() => void queue()} disabled={busy}
            title="Queue the workflow (Ctrl+Enter)">Queue</button>
          <button type="button" onClick={() => interrupt().catch(() => undefined)} title="Interrupt the running prompt">
            Interrupt
          </button>
          <span className="sf-sep" />
          <button type="button" onClick={openPaletteCentered} title="Add a node (or double-click the canvas)">Add node</button>
          <button type="button" onClick={undo} title="Undo (Ctrl+Z)">Undo</button>
          <button type="button" onClick={redo} title="Redo (Ctrl+Shift+Z)">Redo</button>
          <span className="sf-sep" />
          <button type="button" onClick={() => fileInput.current?.click()} title="Open a workflow or a PNG (Ctrl+O)">Open</button>
          <button type="button" onClick={save} title="Save the workflow (Ctrl+S)">Save</button>
          <div className="sf-menu">
            <button type="button" onClick={() => void openExamples()}>Examples ▾</button>
            {examples && (
              <ul className="sf-menu-list" role="menu">
                {examples.length === 0 && <li className="sf-muted">No examples</li>}
                {examples.map((ex) => (
                  <li key={ex.name} role="menuitem" onClick={() => void openExample(ex)}>{ex.title}</li>
                ))}
              </ul>
            )}
          </div>
          <button type="button" onClick={clear} title="Start an empty workflow">Clear</button>
          <button type="button" onClick={refreshDefs} title="Reload node types and model lists">Refresh</button>
          <span className="sf-docname" title="document name">{docName}</span>
          <input
            ref={fileInput}
            type="file"
            accept=".json,.png,application/json,image/png"
            hidden
            aria-label="open workflow file"
            onChange={(e) => {
              const f = e.target.files?.[0];
              e.target.value = "";
              if (f) void loadFile(f);
            }}
          />
        </header>
        <div className="sf-main">
          <div
            className={`sf-canvas${lod ? " sf-lod" : ""}`}
            onDragOver={(e) => {
              if (e.dataTransfer.types.includes("Files")) e.preventDefault();
            }}
            onDrop={(e) => {
              const f = e.dataTransfer.files?.[0];
              if (!f) return;
              e.preventDefault();
              void loadFile(f);
            }}
            onMouseMove={(e) => {
              mouse.current = rf.screenToFlowPosition({ x: e.clientX, y: e.clientY });
            }}
          >
            <ReactFlow<SfFlowNode, SfEdge>
              nodes={nodes}
              edges={edges}
              nodeTypes={nodeTypes}
              onNodesChange={onNodesChange}
              onEdgesChange={onEdgesChange}
              onConnect={onConnect}
              onConnectEnd={onConnectEnd}
              isValidConnection={isValidConnection}
              onMoveEnd={() => writeAutosave()}
              onDoubleClick={(e) => {
                if (!(e.target as HTMLElement).classList.contains("react-flow__pane")) return;
                setPalette({ screen: { x: e.clientX, y: e.clientY }, flow: rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }) });
              }}
              zoomOnDoubleClick={false}
              deleteKeyCode={["Delete", "Backspace"]}
              multiSelectionKeyCode={["Control", "Meta", "Shift"]}
              selectionKeyCode="Shift"
              minZoom={0.1}
              maxZoom={4}
              onlyRenderVisibleElements={ONLY_VISIBLE}
              proOptions={{ hideAttribution: true }}
              defaultEdgeOptions={{ type: "default" }}
            >
              {!lod && <Background variant={BackgroundVariant.Dots} gap={24} size={1} />}
              <Controls showInteractive={false} />
            </ReactFlow>
            {nodes.length === 0 && (
              <div className="sf-empty">
                Double-click the canvas to add a node, open a workflow, drop a Steerflow PNG, or pick an example.
              </div>
            )}
          </div>
          <SidePanel store={store} onLoad={(obj) => loadObject(obj, "workflow")} openImage={setLightbox} notify={notify}
            feedback={feedback} />
        </div>
        <StatusBar store={store} />
        {palette && (
          <Palette defs={defs} filter={palette.filter} at={palette.screen} onPick={pick} onClose={() => setPalette(null)} />
        )}
        {lightbox && (
          <div className="sf-lightbox" onClick={() => setLightbox(null)} role="dialog" aria-label="image">
            <img alt={lightbox.filename} src={viewUrl(lightbox)} />
            <div className="sf-lightbox-bar" onClick={(e) => e.stopPropagation()}>
              <span>{lightbox.filename}</span>
              <a href={viewUrl(lightbox)} download={lightbox.filename}>Download</a>
              <button type="button" onClick={() => void openLightboxWorkflow(lightbox)}>Open its workflow</button>
              <button type="button" onClick={() => setLightbox(null)}>Close</button>
            </div>
          </div>
        )}
        <div className="sf-toasts" aria-live="polite">
          {toasts.map((t) => (
            <div key={t.id} className={`sf-toast ${t.kind}`} data-testid="toast" role={t.kind === "error" ? "alert" : "status"}>
              {t.text}
            </div>
          ))}
        </div>
      </div>
    </EditorContext.Provider>
  );
}

export function App() {
  const [defs, setDefs] = useState<Defs | null>(null);
  const [error, setError] = useState<string | null>(null);
  const load = useCallback(() => {
    getObjectInfo()
      .then((info) => {
        setDefs(parseObjectInfo(info));
        setError(null);
      })
      .catch((e: Error) => setError(e.message));
  }, []);
  useEffect(load, [load]);
  if (!defs) {
    return (
      <div className="sf-loading">
        {error ? (
          <>
            <p>Cannot load node types from the server: {error}</p>
            <button type="button" onClick={load}>Retry</button>
          </>
        ) : (
          <p>Loading node types…</p>
        )}
      </div>
    );
  }
  return (
    <ReactFlowProvider>
      <Editor defs={defs} refreshDefs={load} />
    </ReactFlowProvider>
  );
}

