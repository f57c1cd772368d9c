/**
 * The editor: composes the graph store (editor/useGraphStore.ts), the canvas,
 * the toolbar, the side panel and the dialogs. Behaviour lives in the editor/
 * modules; this file wires them together.
 */

import {
  ControlButton, Controls, MiniMap, ReactFlow, ReactFlowProvider, useReactFlow, useStore,
} from "@xyflow/react";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import {
  convertWorkflow, deleteFromQueue, type ExampleRef, getHistory, getObjectInfo, getPackErrors, getQueue, getWorkflow, interrupt, makeClientId,
  readUserFile, Socket, uploadImage, viewUrl,
} from "./api";
import { EditorContext, type EditorApi } from "./canvas/context";
import { DotGrid } from "./canvas/DotGrid";
import type { SfEdge, SfNode as SfFlowNode } from "./canvas/flow";
import { Palette } from "./canvas/Palette";
import { nodeTypes } from "./canvas/VirtualNodes";
import { ConfirmDialog } from "./editor/ConfirmDialog";
import { ContextMenu, type MenuTarget } from "./editor/ContextMenu";
import { GroupLayer, groupSelection } from "./editor/Groups";
import { Lightbox } from "./editor/Lightbox";
import { NodeHelp } from "./editor/NodeHelp";
import { ShortcutsHelp } from "./editor/ShortcutsHelp";
import { ConnectionBanner, StatusBar } from "./editor/StatusBar";
import { clientOf } from "./lib/queueview";
import { restoreResults, watchInFlight } from "./editor/restoreResults";
import { Toasts, useToasts } from "./editor/Toasts";
import { Toolbar } from "./editor/Toolbar";
import { TooltipLayer } from "./editor/Tooltips";
import { useClipboard } from "./editor/useClipboard";
import { useEditCommands } from "./editor/useEditCommands";
import { useFeedback } from "./editor/useFeedback";
import { asFit, tabSaves, useGraphStore } from "./editor/useGraphStore";
import { guardTabId } from "./lib/autosave";
import { useLinking } from "./editor/useLinking";
import { useMinimapPan } from "./editor/useMinimapPan";
import { useAutoQueue, useQueueOptions } from "./editor/useAutoQueue";
import { useQueue } from "./editor/useQueue";
import { useRefitOnResize } from "./editor/useRefitOnResize";
import { blurFocusedField, isEditable, queueKeyBlocker, SELECTION_KEYS, useShortcuts } from "./editor/useShortcuts";
import { useSpacePan } from "./editor/useSpacePan";
import { useAltDragClone } from "./editor/useAltDragClone";
import { failureOf, useLibrary } from "./editor/useLibrary";
import { type LibraryEntry, openable, userPath } from "./lib/library";
import { queuedPrompt } from "./lib/dynamicprompts";
import { stringifyJsonExact } from "./lib/exactint";
import { packErrorText } from "./lib/packerrors";
import { documentToGraph, emptyGraph, graphToDocument, type WorkflowDocument } from "./lib/graph";
import { fileSafeName } from "./lib/filename";
import { carriesWorkflow, fileOfUrl, imageUploadInput, isImageFile, selectedUploadTarget, serverImageUrl, uploadTargetOf } from "./lib/drop";
import { CANVAS_MAX_ZOOM, CANVAS_MIN_ZOOM, lowDetail } from "./lib/layout";
import { missingModels, missingModelsText } from "./lib/missingmodels";
import { graphPromptOf, type RanOutputs, ranOutputs } from "./lib/history";
import { lightboxSet } from "./lib/lightbox";
import { type Loaded, loadWorkflowBytes, loadWorkflowObject, loadWorkflowPng } from "./lib/load";
import { type ImageRef, RunStore } from "./lib/runstore";
import { type Defs, nodeTitle, parseObjectInfo } from "./lib/schema";
import { SidePanel } from "./panels/SidePanel";
import type { TabToggle } from "./lib/sidepanel";

const DEFAULT_WORKFLOW = "txt2img.json";
/** The tag of the notice naming the models an opened workflow lacks (it follows the graph). */
const MISSING_MODELS_TOAST = "missing-models";
/** The node a pasted image goes into when no Load Image is selected (the first this server has). */
const LOAD_IMAGE_TYPES = ["LoadImage"];
/** This tab's training loss curves, kept in sessionStorage over a reload. */
const LOSS_CURVES_KEY = "steerflow.lossCurves";
/** The prompts queued from the tab's graph (RunStore.graphPromptIds), kept across a reload. */
const GRAPH_PROMPTS_KEY = "steerflow.graphPrompts";
/** The library file the tab's graph came from (Save saves over it unasked), kept across a reload. */
const LIBRARY_PATH_KEY = "steerflow.libraryPath";

/** What was kept under `key` before the reload (read once), or null. */
function takeKept(key: string): unknown {
  try {
    const text = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}
const params = new URLSearchParams(window.location.search);
// A large graph mounts only the nodes in view (measured by bench/bench_canvas.py: panning
// a 300-node graph at zoom 1 keeps 60 fps this way); ?visibleOnly=0 mounts all. A small
// one mounts every node, so the parts scrolled out of view are ready when they come in.
const ONLY_VISIBLE = params.get("visibleOnly") !== "0";
const MOUNT_ALL_BELOW = 60;
/** The minimap's shade outside the view: React Flow's default is a light grey that glares on the dark theme. */
const MINIMAP_MASK = "rgb(0 0 0 / 45%)";
const zoomOf = (s: { transform: [number, number, number] }) => s.transform[2];

/** React Flow's fit-view icon: the Controls' own fit button is replaced so that its fit is remembered (a resize redoes it). */
function FitViewIcon() {
  return (
    <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 30" aria-hidden="true">
      <path d="M3.692 4.63c0-.53.4-.938.939-.938h5.215V0H4.708C2.13 0 0 2.054 0 4.63v5.216h3.692V4.631zM27.354 0h-5.2v3.692h5.17c.53 0 .984.4.984.939v5.215H32V4.631A4.624 4.624 0 0027.354 0zm.954 24.83c0 .532-.4.94-.939.94h-5.215v3.768h5.215c2.577 0 4.631-2.13 4.631-4.707v-5.139h-3.692v5.139zm-23.677.94c-.531 0-.939-.4-.939-.94v-5.138H0v5.139c0 2.577 2.13 4.707 4.708 4.707h5.138V25.77H4.631z" />
    </svg>
  );
}

declare global {
  interface Window {
    steerflow?: {
      getDocument(): WorkflowDocument;
      loadDocument(doc: unknown): void;
      setViewport(vp: { x: number; y: number; zoom: number }): void;
      getViewport(): { x: number; y: number; zoom: number };
      fitView(): void;
      store: RunStore;
      ready: boolean;
    };
  }
}

function downloadJson(name: string, obj: unknown): void {
  const blob = new Blob([stringifyJsonExact(obj, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name.endsWith(".json") ? name : `${name}.json`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}


function Editor({ defs, refreshDefs }: { defs: Defs; refreshDefs(): void }) {
  const rf = useReactFlow<SfFlowNode, SfEdge>();
  const store = useMemo(() => new RunStore(), []);
  const { toasts, notify, dismiss, clearToasts, retag } = useToasts();
  // packs that failed to load: their nodes are missing, and only the server's log said why
  useEffect(() => {
    getPackErrors().then((errors) => {
      const text = packErrorText(errors);
      if (text) notify(text, "warning", undefined, { keep: true }); // about the server: opening a workflow keeps it
    }).catch(() => undefined);
  }, [notify]);
  const g = useGraphStore(defs, store, (message) => notify(message, "error"));
  const { nodes, edges, defsRef, loadGraph, currentGraph, patchNode, holdHistory, settleNow } = g;
  const writeAutosaveRef = useRef(g.writeAutosave);
  writeAutosaveRef.current = g.writeAutosave;
  const flushAutosaveRef = useRef(g.flushAutosave);
  flushAutosaveRef.current = g.flushAutosave;
  const [lightbox, setLightbox] = useState<{ images: readonly ImageRef[]; index: number } | null>(null);
  const openImage = useCallback((img: ImageRef, set?: readonly ImageRef[]) => setLightbox(lightboxSet(img, set)), []);
  /** Clear's question, while asked. */
  const [confirmClear, setConfirmClear] = useState(false);
  /**
   * The workflow being opened (its name) while it loads: see `openWith`. The ref is read by
   * key handlers at once; the state draws the busy overlay.
   */
  const [opening, setOpening] = useState<string | null>(null);
  const openingRef = useRef<string | null>(null);
  const openSeq = useRef(0);
  /** Queue presses made while a workflow opened, run once it is in; and whether the last opening succeeded. */
  const afterOpen = useRef<(() => void)[]>([]);
  const openOk = useRef(true);
  const [menu, setMenu] = useState<MenuTarget | null>(null);
  const [help, setHelp] = useState<string | null>(null);
  const [keysHelp, setKeysHelp] = useState(false);
  const [panelToggle, setPanelToggle] = useState<TabToggle | null>(null);
  // The pointer in screen pixels, turned into flow coordinates only when read (a paste, the
  // palette): converting on every mousemove read the layout on every pan frame.
  const pointer = useRef<{ x: number; y: number } | null>(null);
  const mouse = useMemo(() => ({
    get current() {
      return pointer.current ? rf.screenToFlowPosition(pointer.current) : null;
    },
  }), [rf]);
  const fileInput = useRef<HTMLInputElement>(null);
  const canvas = useRef<HTMLDivElement>(null);
  const socket = useRef<Socket | null>(null);
  /** Stops watching the reloaded graph's prompts that were in flight (another graph opens). */
  const stopWatch = useRef<(() => void) | null>(null);
  const clientIdOf = useCallback(() => socket.current?.clientId, []);
  const zoom = useStore(zoomOf);
  const lod = lowDetail(zoom, nodes.length);
  const culled = ONLY_VISIBLE && nodes.length >= MOUNT_ALL_BELOW;

  const linking = useLinking(g, notify);
  const edit = useEditCommands(g, notify, mouse);
  const { queue, queueSelected: queueSelectedNow, busy, showNodes } = useQueue(g, store, socket, notify, retag);
  const queueOptions = useQueueOptions();
  /**
   * A Queue pressed while a workflow is opening (its file fetched or converted by the
   * server) runs once that workflow is on the canvas, and runs it: the user asked for it
   * after picking it, and the canvas is busy meanwhile (what ComfyUI's instant load would
   * have run). It never runs the graph being replaced; if the opening fails, it is dropped,
   * and said so.
   */
  const whenOpened = useCallback((run: () => void) => {
    const name = openingRef.current;
    if (!name) return run();
    afterOpen.current.push(run);
    notify(`Queue waits for ${name} to open`);
  }, [notify]);
  useEffect(() => {
    if (opening || !afterOpen.current.length) return;
    // after the render that put the opened graph in (the queue reads the graph from it)
    const pending = afterOpen.current.splice(0);
    if (openOk.current) for (const run of pending) run();
    else notify("Not queued: the workflow did not open (press Queue again to run the one shown)", "error");
  }, [opening, notify]);
  const queueN = useCallback(() => whenOpened(() => {
    // an invalid batch count (empty, 0, 1000) is refused, not replaced by another count unseen
    if (queueOptions.countIssue) {
      notify(`Not queued: ${queueOptions.countIssue}`, "error");
      return;
    }
    void queue(undefined, queueOptions.count);
  }), [whenOpened, queue, queueOptions.count, queueOptions.countIssue, notify]);
  const queueSelected = useCallback(() => whenOpened(() => void queueSelectedNow()), [whenOpened, queueSelectedNow]);
  useAutoQueue(g, store, queue, queueOptions.onChange);
  const feedback = useFeedback(g, notify, linking.freePosition);
  // a resized window refits a view the user has not moved since it was fitted
  useRefitOnResize(canvas, g.refit);
  // dragging in the minimap pans at its scale and keeps the graph in view
  useMinimapPan(canvas);
  // Space+drag pans, over nodes too (ComfyUI's litegraph)
  useSpacePan(canvas, g.writeAutosave);
  // Alt+drag on a node drags a clone of it (ComfyUI's litegraph)
  useAltDragClone(canvas, g);

  useEffect(() => {
    // after a reconnect: the queue and the running state as the server has them (a restarted
    // server re-queues the prompt it was running), and what became of the prompt lost with the connection
    const resync = async () => {
      store.bumpQueue();
      try {
        const [q, history] = await Promise.all([getQueue(), getHistory(50)]);
        const mine = new Set([...q.running, ...q.pending].filter((i) => clientOf(i) === s.clientId).map((i) => i.promptId));
        const what = store.resync({ running: q.running, pending: q.pending, history }, (id) => mine.has(id));
        if (!what) return;
        const stop = what.kind === "rerunning"
          ? { label: "Interrupt", run: () => void interrupt(what.promptId).then(() => store.bumpQueue()).catch(() => undefined) }
          : what.kind === "requeued"
          ? { label: "Cancel", run: () => void deleteFromQueue([what.promptId]).then(() => store.bumpQueue()).catch(() => undefined) }
          : undefined;
        notify(what.text, what.kind === "gone" ? "error" : "warning", stop);
      } catch {
        // the server went away again: the next reconnect tries again
      }
    };
    // after a reload: this tab's prompt still running (same client id, kept in sessionStorage)
    // is taken back, so its queue item keeps its progress and a training's curve goes on
    const adopt = () => void getQueue().then((q) => {
      store.adoptRunning(q.running.find((i) => clientOf(i) === s.clientId)?.promptId);
    }).catch(() => undefined);
    const s = new Socket(makeClientId(), store, () => void resync(), adopt);
    socket.current = s;
    s.open();
    // a training's loss curve so far stays with the tab across a reload (the server keeps no loss
    // history), and which prompts were its graph's (their run goes on being drawn on it)
    const keepCurves = () => {
      flushAutosaveRef.current(); // an edit made just before the close or reload is kept
      try {
        sessionStorage.setItem(LOSS_CURVES_KEY, JSON.stringify(store.lossCurves()));
        sessionStorage.setItem(GRAPH_PROMPTS_KEY, JSON.stringify(store.graphPromptIds()));
        sessionStorage.setItem(LIBRARY_PATH_KEY, JSON.stringify(g.library.current()));
      } catch {
        // storage full or off: the curve starts again at the current step
      }
    };
    window.addEventListener("pagehide", keepCurves);
    return () => {
      window.removeEventListener("pagehide", keepCurves);
      s.close();
    };
  }, [store, notify]);

  // --- opening workflows -----------------------------------------------------------------
  // Save (Ctrl+S): into the workflow library on the server, as ComfyUI's Save does
  const graphDocument = useCallback(() => graphToDocument(currentGraph(), defsRef.current), [currentGraph, defsRef]);
  const library = useLibrary({
    docName: g.docName, rename: g.setDocName, graphDocument, defsRef, notify, file: g.library, shownFile: g.libraryFile,
  });
  const applyLoaded = useCallback((loaded: Loaded, name?: string, firstView = false,
    restore: boolean | RanOutputs = false, libraryFile: string | null = null) => {
    // the previous workflow's errors and warnings point at nodes that are gone
    clearToasts();
    stopWatch.current?.();
    // a ComfyUI file's layout is for ComfyUI's node sizes, an API prompt's a grid: make room for ours
    loadGraph(loaded.graph, {
      arrange: loaded.kind !== "document", firstView, name: name ? name.replace(/\.(json|png)$/i, "") : undefined,
      library: libraryFile, // (the Workflows tab's mark follows: another graph opened clears it)
    });
    const n = loaded.graph.nodes.length;
    // one at a time: opening several in a row must not stack them over the canvas
    notify(`Opened ${name ?? "workflow"} (${n} node${n === 1 ? "" : "s"}${loaded.kind === "comfyui" ? ", from ComfyUI" : ""})`,
      "info", undefined, { tag: "opened" });
    for (const w of loaded.warnings.slice(0, 3)) notify(w, "warning");
    if (typeof restore === "object") {
      // a history entry's own outputs on its nodes (the newest run of the same graph, with
      // another seed, showed its image beside this entry's seed)
      store.restoreResults(ranOutputs(restore, loaded.graph.nodes), []);
    } else if (restore) { // a queued prompt's graph: its newest outputs, as a reload of it shows them
      void restoreResults(store, loaded.graph.nodes, undefined, graphPromptOf(loaded.graph, defsRef.current),
        socket.current?.clientId ?? makeClientId()).catch(() => undefined);
    }
    // model files the server lacks: marked on their widgets now, summed up here (not only when queued)
    const missing = missingModels(loaded.graph, defsRef.current);
    const text = missingModelsText(missing, loaded.graph, defsRef.current);
    if (text) {
      notify(text, "warning", { label: "Show", run: () => showNodes(missing.flatMap((m) => m.nodes.map((x) => x.id))) },
        { tag: MISSING_MODELS_TOAST });
      missingShown.current = true;
    }
  }, [loadGraph, notify, clearToasts, defsRef, showNodes, store]);
  // the notice follows the graph: a model picked (or a node removed) takes it down
  const missingShown = useRef(false);
  useEffect(() => {
    if (!missingShown.current) return;
    const graph = currentGraph();
    const text = missingModelsText(missingModels(graph, defsRef.current), graph, defsRef.current);
    retag(MISSING_MODELS_TOAST, text);
    if (text === null) missingShown.current = false;
  }, [nodes, currentGraph, defsRef, retag]);

  /**
   * Open a workflow, atomically as the user sees it. `load` reads it, over the network for an
   * example (GET /workflows/…), a ComfyUI file (POST /workflow/convert) or an image's workflow;
   * on a remote server that takes a while. Meanwhile the canvas is inert under a busy overlay,
   * the editing keys are off and a Queue waits (`whenOpened`): an edit or a run can no longer
   * go to the old graph that the opened one then replaces (the drill's lost "steps" edit, the
   * queued old graph). Blocking, not merging, is what a ComfyUI user expects: its load is
   * instant, so whatever is done after picking a workflow is done to that workflow. A later
   * open wins over one still loading. Resolves true once the graph is on the canvas.
   */
  const openWith = useCallback(async (label: string, load: () => Promise<Loaded>, opts: {
    name?: string; failText?: string; firstView?: boolean; quiet?: boolean; restore?: boolean | RanOutputs;
    /** The library file opened (Save saves over it without asking). */
    library?: string;
  } = {}): Promise<boolean> => {
    const seq = ++openSeq.current;
    openingRef.current = label;
    setOpening(label);
    let ok = false;
    try {
      const loaded = await load();
      if (seq !== openSeq.current) return false; // a later open replaced this one
      applyLoaded(loaded, opts.name, opts.firstView, opts.restore, opts.library ?? null);
      ok = true;
      return true;
    } catch (e) {
      if (seq === openSeq.current && !opts.quiet) notify(`${opts.failText ?? `Cannot open ${label}`}: ${(e as Error).message}`, "error");
      return false;
    } finally {
      if (seq === openSeq.current) {
        openOk.current = ok;
        openingRef.current = null;
        setOpening(null);
      }
    }
  }, [applyLoaded, notify]);

  const loadObject = useCallback((obj: unknown, name?: string) =>
    openWith(name ?? "workflow", () => loadWorkflowObject(obj, defsRef.current, convertWorkflow), { name }),
  [openWith, defsRef]);

  const openAutosave = useCallback((doc: unknown, name: string) => void loadObject(doc, name), [loadObject]);

  /** History's Load: the entry's workflow, its outputs back on its nodes at once (as a
   * reload of that graph shows them; they came only after a reload). */
  const loadFromHistory = useCallback((obj: unknown, name: string, ran?: RanOutputs) => void openWith(name, () =>
    loadWorkflowObject(obj, defsRef.current, convertWorkflow), { name, restore: ran ?? true }),
  [openWith, defsRef]);

  const loadFile = useCallback((file: File) => openWith(file.name, async () => {
    const bytes = new Uint8Array(await file.arrayBuffer());
    return loadWorkflowBytes(file.name, bytes, defsRef.current, convertWorkflow);
  }, { name: file.name }), [openWith, defsRef]);

  // an example is shown whole, as the first visit's graph (its Save Image was cut off at
  // the readable zoom: at 1280x800 in all but one example, the first-time walk)
  const openExample = useCallback((ex: ExampleRef) => openWith(ex.name, async () =>
    loadWorkflowObject(await getWorkflow(ex.name), defsRef.current, convertWorkflow),
  { name: ex.name, firstView: true }),
  [openWith, defsRef]);

  const openImageWorkflow = useCallback(async (img: ImageRef) => {
    const ok = await openWith(img.filename, async () => {
      const res = await fetch(viewUrl(img));
      const bytes = new Uint8Array(await res.arrayBuffer());
      return loadWorkflowPng(bytes, defsRef.current, convertWorkflow);
    }, { name: img.filename, failText: "Cannot open the image's workflow" });
    if (ok) setLightbox(null);
  }, [openWith, defsRef]);

  // Restore the last session's graph once; a first visit opens the default text-to-image graph.
  useEffect(() => {
    const tabs = tabSaves();
    const saved = tabs.restore(); // this tab's own graph (a reload), else the newest of any tab
    if (!saved) {
      // its first view shows all of it, whatever the window (loadGraph's firstView);
      // no examples on this server: it starts empty, quietly
      void openWith(DEFAULT_WORKFLOW, async () =>
        loadWorkflowObject(await getWorkflow(DEFAULT_WORKFLOW), defsRef.current, convertWorkflow),
      { name: DEFAULT_WORKFLOW, firstView: true, quiet: true });
    } else {
      try {
        const doc = JSON.parse(saved.doc);
        const { graph } = documentToGraph(doc, defsRef.current);
        const name = typeof doc?.extra?.name === "string" ? doc.extra.name as string : undefined;
        delete graph.extra?.name;
        // a new tab's copy of another tab's graph is its own from now on (a reload keeps it)
        if (saved.from !== "tab") tabs.save(saved.doc, saved.fit, name ?? "");
        const path = saved.from === "tab" ? takeKept(LIBRARY_PATH_KEY) : null;
        // a saved view that was a fit still refits on a resize
        loadGraph(graph, { fitted: asFit(saved.fit), name, library: typeof path === "string" ? path : null });
        if (saved.from === "tab") {
          store.restoreLossCurves(takeKept(LOSS_CURVES_KEY));
          store.restoreGraphPrompts(takeKept(GRAPH_PROMPTS_KEY));
        }
        // the results shown before the reload, from the server's history; the graph's prompts
        // still queued or running (another tab's, e.g. one closed meanwhile) when they finish
        // (only outputs of prompts that ran this graph: node ids start at 1 again after a Clear)
        const watch = watchInFlight(store, () => g.state.current.nodes.map((n) => ({ id: n.id, type: n.data.type })),
          undefined, undefined, () => graphPromptOf(currentGraph(), defsRef.current));
        void watch.ready.then(() => restoreResults(store, graph.nodes, undefined, graphPromptOf(graph, defsRef.current),
          socket.current?.clientId ?? makeClientId()))
          .catch(() => undefined);
        stopWatch.current = watch.stop;
      } catch {
        tabs.forget(saved.id);
      }
    }
    // a duplicated tab shares its original's id (sessionStorage is copied): it takes a new one
    return guardTabId(tabs, () => writeAutosaveRef.current());
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  // --- what node components call -----------------------------------------------------------
  const api: EditorApi = useMemo(() => ({
    defs,
    store,
    setValue: (id, name, value) => {
      patchNode(id, (n) => ({ ...n, data: { ...n.data, values: { ...n.data.values, [name]: value } } }));
      store.clearInputErrors(id, name); // the last run's message about the old value
    },
    updateValues: (id, update) => patchNode(id, (n) => {
      const values = update(n.data.values);
      // the last run's messages about the changed values (idempotent, so safe in the updater)
      for (const k of new Set([...Object.keys(values), ...Object.keys(n.data.values)])) {
        if (values[k] !== n.data.values[k]) store.clearInputErrors(id, k);
      }
      return { ...n, data: { ...n.data, values } };
    }),
    setTitle: (id, title) => patchNode(id, (n) => ({ ...n, data: { ...n.data, title } })),
    setControl: (id, name, mode) =>
      patchNode(id, (n) => ({ ...n, data: { ...n.data, control: { ...n.data.control, [name]: mode } } })),
    upload: async (id, name, file) => {
      const value = await uploadImage(file);
      patchNode(id, (n) => ({ ...n, data: { ...n.data, values: { ...n.data.values, [name]: value } } }));
      refreshDefs();
    },
    openImage,
    holdHistory: (on) => {
      if (on) settleNow(); // an edit made just before stays its own undo step
      holdHistory.current = on;
    },
    showHelp: setHelp,
    primitiveFor: (id, name) => void linking.primitiveFor(id, name),
  }), [defs, store, patchNode, refreshDefs, holdHistory, settleNow, openImage, linking.primitiveFor]);

  /**
   * A dropped file: an image dropped onto a Load Image node (or onto empty canvas while that
   * node is the one selected, when the image carries no workflow) is uploaded into it, as
   * its Upload button does; anything else is opened as a workflow.
   */
  const dropFile = useCallback(async (file: File, onNodeId: string | null, pasted = false,
    dropAt?: { x: number; y: number }) => {
    if (!isImageFile(file)) return loadFile(file);
    const refs = g.state.current.nodes.map((n) => ({ id: n.id, type: n.data.type, selected: n.selected }));
    let target = uploadTargetOf(refs.find((n) => n.id === onNodeId), defsRef.current);
    if (!target) {
      if (await carriesWorkflow(new Uint8Array(await file.arrayBuffer()))) return loadFile(file);
      target = selectedUploadTarget(refs, defsRef.current);
      // a pasted or dropped image with no Load Image selected gets a new one at the pointer
      // (where it was dropped), as in ComfyUI
      const loader = (pasted || dropAt) && !target
        ? LOAD_IMAGE_TYPES.find((t) => imageUploadInput(defsRef.current.get(t))) : undefined;
      if (loader) {
        const at = dropAt ?? mouse.current ?? rf.screenToFlowPosition({ x: window.innerWidth / 2, y: window.innerHeight / 2 });
        target = { node: linking.addNodeAt(loader, at), input: imageUploadInput(defsRef.current.get(loader))! };
      }
      if (!target) {
        notify(`${file.name} carries no workflow to open: drop it onto a Load Image node to use it there`, "error");
        return;
      }
    }
    const node = g.state.current.nodes.find((n) => n.id === target.node);
    const name = node ? `${nodeTitle(node.data, defsRef.current)} #${target.node}` : `node ${target.node}`;
    try {
      await api.upload(target.node, target.input, file);
      notify(`Uploaded ${file.name} into ${name}`);
    } catch (e) {
      notify(`Cannot upload ${file.name}: ${(e as Error).message}`, "error");
    }
  }, [g.state, defsRef, loadFile, notify, api, mouse, rf, linking]);

  // Ctrl+V from the system clipboard: an image, a workflow's JSON, or the nodes copied here
  const pasteKey = useClipboard({
    paused: () => !!linking.palette || !!menu || !!openingRef.current || confirmClear || !!lightbox,
    takeCopied: edit.takeCopied,
    pasteNodes: () => edit.paste(false),
    pasteClip: edit.pasteClip,
    pasteImage: (file) => void dropFile(file, null, true),
    openWorkflow: (workflow) => void loadObject(workflow, "pasted workflow"),
  });

  /**
   * Export: the workflow as a file in the downloads (what Save did before the library), our
   * document format, which Open (and ComfyUI's converter here) reads back.
   */
  const exportFile = useCallback((as?: string) => {
    const name = fileSafeName(as ?? g.docName) || "workflow"; // the file the browser saves, named as said
    downloadJson(name, graphToDocument(currentGraph(), defsRef.current));
    // the download itself may show nowhere (a browser set to save without asking)
    notify(`Exported ${name}.json to your downloads (click the name at the top right to rename the workflow)`, "info",
      undefined, { tag: "saved" });
  }, [currentGraph, g.docName, defsRef, notify]);

  const save = useCallback((as?: string) => void library.save(as), [library]);
  /** Open a workflow of the library (the Workflows tab), as a file or an example opens. */
  const openLibrary = useCallback(async (entry: LibraryEntry) => {
    const ok = await openWith(entry.name, async () => {
      let file: unknown;
      try {
        file = await readUserFile(userPath(entry.path));
      } catch (e) {
        const f = failureOf(e);
        if (f.status === 404) library.refresh();
        throw new Error(f.status === 404 ? "it is no longer in the library (deleted or renamed elsewhere)"
          : f.network ? `the server cannot be reached (${f.message})` : f.message ?? "the server refused it");
      }
      return loadWorkflowObject(openable(file).obj, defsRef.current, convertWorkflow);
    }, { name: entry.name, library: entry.path, failText: `Cannot open ${entry.label} from the library` });
    return ok;
  }, [openWith, defsRef, library]);

  /**
   * ComfyUI's "Export (API)": the prompt alone, as Queue posts it (64-bit seeds exact; as in
   * ComfyUI, each `{a|b}` of a dynamic prompt resolved to one pick, comments removed).
   */
  const exportApi = useCallback(() => {
    const { prompt } = queuedPrompt(currentGraph(), defsRef.current);
    downloadJson(`${g.docName || "workflow"}_api`, prompt);
  }, [currentGraph, g.docName, defsRef]);

  /** Clear, once confirmed (an undo step like any edit: Ctrl+Z brings the graph back). */
  const clearNow = useCallback(() => {
    setConfirmClear(false);
    stopWatch.current?.();
    loadGraph(emptyGraph(), { name: "workflow" }); // from no library file (Ctrl+Z brings the old one back)
  }, [loadGraph]);
  /** Clear asks first when there is a graph to lose, as ComfyUI's Clear does by default. */
  const clear = useCallback(() => {
    if (openingRef.current) return; // the graph being opened replaces this one anyway
    if (!g.state.current.nodes.length) clearNow();
    else setConfirmClear(true);
  }, [g.state, clearNow]);
  /** While a workflow opens, commands that edit the graph wait for nothing: they do nothing (the canvas is busy). */
  const unlessOpening = useCallback((fn: () => void) => () => {
    if (!openingRef.current) fn();
  }, []);

  /** A queue key pressed over a modal dialog (Examples, Clear's question) queues nothing: the graph is hidden behind it. */
  const queueKey = useCallback((run: () => void) => () => {
    const dialog = queueKeyBlocker(document, !!openingRef.current);
    if (dialog) notify(`Not queued: the “${dialog}” dialog is open over the graph (close it first)`, "warning");
    else run();
  }, [notify]);

  /** Interrupt (the toolbar's, Ctrl+Alt+Enter): with nothing running it says so (it did nothing, silently). */
  const interruptNow = useCallback(() => {
    const run = store.getGlobal();
    if (run.connected && !run.running && run.queueRemaining === 0) notify("Nothing is running to interrupt", "info");
    void interrupt().catch(() => undefined);
  }, [store, notify]);

  const shortcuts = useMemo(() => ({
    keys: () => setKeysHelp((open) => !open),
    queue: queueKey(queueN),
    queueFront: queueKey(() => whenOpened(() => {
      if (queueOptions.countIssue) notify(`Not queued: ${queueOptions.countIssue}`, "error");
      else void queue(undefined, queueOptions.count, true);
    })),
    interrupt: interruptNow,
    save,
    open: () => fileInput.current?.click(),
    undo: g.undo,
    redo: g.redo,
    copy: edit.copy,
    // Ctrl+V waits for its paste event (editor/useClipboard.ts); Ctrl+Shift+V keeps the input links
    paste: (withInputs: boolean) => (withInputs ? edit.paste(true) : pasteKey()),
    selectAll: edit.selectAll,
    toggleMode: (mode: "muted" | "bypass") => edit.toggleMode(mode),
    group: () => void groupSelection(g),
    collapse: () => edit.toggleFlag("collapsed"),
    pin: () => edit.toggleFlag("pinned"),
    fitView: () => g.fitAll(),
    zoom: (direction: 1 | -1) => void (direction > 0 ? rf.zoomIn({ duration: 120 }) : rf.zoomOut({ duration: 120 })),
    panel: (tab: "queue" | "history" | "workflows") => setPanelToggle((t) => ({ tab, seq: (t?.seq ?? 0) + 1 })),
    refresh: () => {
      refreshDefs();
      notify("Refreshing the node definitions…");
    },
    deleteLink: edit.removeLink,
  }), [queueKey, queueN, whenOpened, queue, queueOptions.count, queueOptions.countIssue, notify, save, g, edit, rf, refreshDefs, pasteKey, interruptNow]);
  // a menu, the palette, a modal dialog or a workflow being opened has the keyboard: only the global keys
  useShortcuts(shortcuts, !!linking.palette || !!menu || !!opening || confirmClear || !!lightbox || !!library.question);

  // --- test and benchmark hooks ----------------------------------------------------------
  useEffect(() => {
    window.steerflow = {
      getDocument: () => graphToDocument(currentGraph(), defsRef.current),
      loadDocument: (doc: unknown) => loadObject(doc, "document"),
      setViewport: (vp) => void rf.setViewport(vp),
      getViewport: () => rf.getViewport(),
      fitView: () => g.fitAll({ padding: 0.05 }),
      store,
      ready: true,
    };
  }, [currentGraph, loadObject, store, rf, defsRef, g.fitAll]);

  const toolbar = useMemo(() => ({
    queue: queueN,
    queueSelected,
    rename: g.setDocName,
    interrupt: interruptNow,
    addNode: unlessOpening(linking.openPaletteCentered),
    undo: unlessOpening(g.undo),
    redo: unlessOpening(g.redo),
    canUndo: g.canUndo,
    canRedo: g.canRedo,
    open: () => fileInput.current?.click(),
    save,
    exportFile,
    exportApi,
    openExample,
    clear,
    refresh: refreshDefs,
    keys: () => setKeysHelp((open) => !open),
  }), [interruptNow, g.setDocName, queueN, queueSelected, unlessOpening, linking.openPaletteCentered, g.undo, g.redo, g.canUndo, g.canRedo, save, exportFile, exportApi, openExample, clear,
    refreshDefs]);

  return (
    <EditorContext.Provider value={api}>
      <div className="sf-app">
        <Toolbar a={toolbar} busy={busy} docName={g.docName} notify={notify} options={queueOptions} />
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
        <div className="sf-main">
          <div
            ref={canvas}
            className={`sf-canvas${lod ? " sf-lod" : ""}`}
            onDragOver={(e) => {
              if (e.dataTransfer.types.includes("Files") || e.dataTransfer.types.includes("text/uri-list")) e.preventDefault();
            }}
            onDrop={(e) => {
              const f = e.dataTransfer.files?.[0];
              // an image of this server's dragged from the gallery, History or a node: as its file
              const url = f ? null : serverImageUrl(e.dataTransfer.getData("text/uri-list"), window.location.href);
              if (!f && !url) return;
              e.preventDefault();
              const node = (e.target as Element).closest?.(".react-flow__node")?.getAttribute("data-id") ?? null;
              const at = rf.screenToFlowPosition({ x: e.clientX, y: e.clientY });
              if (f) void dropFile(f, node, false, at);
              else if (url) {
                void fileOfUrl(url).then((file) => dropFile(file, node, false, at),
                  (err: Error) => notify(`Cannot use that image: ${err.message}`, "error"));
              }
            }}
            onMouseMove={(e) => {
              pointer.current = { x: e.clientX, y: e.clientY };
            }}
            // a press on the canvas outside the nodes (empty canvas, a link, the minimap) leaves the
            // widget being edited, as in ComfyUI (React Flow's pan handler keeps the focus where it
            // was): Ctrl+Z, Delete, P... go to the graph again
            onPointerDownCapture={(e) => {
              const t = e.target as Element;
              if (t.closest?.(".react-flow") && !t.closest(".react-flow__node") && !isEditable(t)) blurFocusedField();
            }}
          >
            <ReactFlow<SfFlowNode, SfEdge>
              // a workflow being opened: nothing under the overlay takes the pointer or the focus
              inert={!!opening}
              aria-busy={opening ? true : undefined}
              nodes={nodes}
              edges={edges}
              nodeTypes={nodeTypes}
              onNodesChange={g.onNodesChange}
              onEdgesChange={g.onEdgesChange}
              onConnect={linking.onConnect}
              onConnectEnd={linking.onConnectEnd}
              isValidConnection={linking.isValidConnection}
              onReconnectStart={linking.onReconnectStart}
              onReconnect={linking.onReconnect}
              onReconnectEnd={linking.onReconnectEnd}
              reconnectRadius={14}
              onMoveEnd={() => g.writeAutosave()}
              onDoubleClick={(e) => {
                if (!(e.target as HTMLElement).classList.contains("react-flow__pane")) return;
                linking.setPalette({ screen: { x: e.clientX, y: e.clientY }, flow: rf.screenToFlowPosition({ x: e.clientX, y: e.clientY }) });
              }}
              onPaneContextMenu={(e) => {
                e.preventDefault();
                setMenu({ kind: "pane", x: e.clientX, y: e.clientY });
              }}
              onNodeContextMenu={(e, node) => {
                e.preventDefault();
                setMenu({ kind: "node", id: node.id, x: e.clientX, y: e.clientY });
              }}
              onEdgeContextMenu={(e, edge) => {
                e.preventDefault();
                setMenu({ kind: "edge", id: edge.id, x: e.clientX, y: e.clientY });
              }}
              zoomOnDoubleClick={false}
              // a menu or the palette has the keyboard: Delete must not remove the node under it
              deleteKeyCode={menu || linking.palette || opening ? null : ["Delete", "Backspace"]}
              multiSelectionKeyCode={["Control", "Meta", "Shift"]}
              // Shift+drag or, as in ComfyUI, Ctrl+drag draws a selection box
              selectionKeyCode={SELECTION_KEYS}
              minZoom={CANVAS_MIN_ZOOM}
              maxZoom={CANVAS_MAX_ZOOM}
              onlyRenderVisibleElements={culled}
              proOptions={{ hideAttribution: true }}
              defaultEdgeOptions={{ type: "default" }}
            >
              {!lod && <DotGrid gap={24} size={1} composited={culled} />}
              <GroupLayer g={g} onMenu={(index, x, y) => setMenu({ kind: "group", index, x, y })} />
              <Controls showInteractive={false} showFitView={false}>
                <ControlButton className="react-flow__controls-fitview" onClick={() => g.fitAll()} title="Fit View"
                  aria-label="Fit View">
                  <FitViewIcon />
                </ControlButton>
              </Controls>
              <MiniMap zoomable ariaLabel="minimap" className="sf-minimap" maskColor={MINIMAP_MASK}
                nodeColor={(n) => ((n as SfFlowNode).data?.mode ? "#6b5a2a" : "#4a5563")} />
            </ReactFlow>
            {opening && (
              <div className="sf-opening" role="status" data-testid="opening"><span>Opening {opening}…</span></div>
            )}
            <ConnectionBanner store={store} />
            {help && <NodeHelp g={g} nodeId={help} onClose={() => setHelp(null)} />}
            {keysHelp && <ShortcutsHelp onClose={() => setKeysHelp(false)} />}
            {nodes.length === 0 && (
              <div className="sf-empty">
                Double-click the canvas to add a node, open a workflow, drop a Steerflow PNG, or pick an example.
              </div>
            )}
          </div>
          <SidePanel store={store} onLoad={loadFromHistory} openImage={openImage} notify={notify}
            feedback={feedback} clientId={clientIdOf} openAutosave={openAutosave} toggleTab={panelToggle}
            library={library} openLibrary={openLibrary} />
        </div>
        <StatusBar store={store} clientId={clientIdOf} labelOf={(id) => {
          // the node as the canvas and the queue tab name it: "Sample #3"
          const node = nodes.find((n) => n.id === id);
          return node ? `${nodeTitle(node.data, defsRef.current)} #${id}` : `node ${id}`;
        }} />
        {linking.palette && (
          <Palette defs={defs} filter={linking.palette.filter} at={linking.palette.screen} onPick={linking.pick}
            onClose={() => linking.setPalette(null)} />
        )}
        {menu && <ContextMenu target={menu} g={g} edit={edit} linking={linking} onClose={() => setMenu(null)} />}
        {lightbox && (
          <Lightbox images={lightbox.images} index={lightbox.index} onIndex={(index) => setLightbox((l) => l && { ...l, index })}
            onClose={() => setLightbox(null)} onOpenWorkflow={(img) => void openImageWorkflow(img)} />
        )}
        {confirmClear && (
          <ConfirmDialog title="Clear the workflow?" confirm="Clear"
            message={`This removes all ${nodes.length} node${nodes.length === 1 ? "" : "s"} from the canvas (Undo brings them back).`}
            onConfirm={clearNow} onCancel={() => setConfirmClear(false)} />
        )}
        {library.question && (
          <ConfirmDialog title={library.question.title} confirm={library.question.confirm} message={library.question.message}
            input={library.question.name === undefined ? undefined : { label: "Workflow name", initial: library.question.name }}
            onConfirm={(name) => library.answer(true, name)} onCancel={() => library.answer(false)} />
        )}
        <Toasts toasts={toasts} dismiss={dismiss} aside={!!help || keysHelp} />
        <TooltipLayer />
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
