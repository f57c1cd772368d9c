// Steerflow's own extension for ComfyUI's frontend: the app's built-in default graph
// (Z-Image Turbo's in current releases) needs nodes and models Steerflow does not have.
// On a browser's first visit, when the graph the app opened is empty or holds node types
// this server lacks, Steerflow's txt2img example on the built-in model replaces it, so
// Queue works at once. Once per browser: a graph the user loads later is never replaced.
//
// The app awaits every extension's setup() before it opens its first graph (restored tabs,
// the default graph or the template browser), so setup() must not wait for that graph: it
// starts the offer and returns. The offer waits for the app's start-up to end (the app is
// published as window.app after the setups, then opens its graph), then for the graph to
// settle; a slow start (many node packs' extensions) only delays it. The browser is marked
// as offered once the decision is carried out, so a page closed before that tries again.
//
// The example goes into the tab that holds the app's graph, not a tab of its own: the app's
// loadApiJson(prompt, name) opens a new temporary workflow unless `name` is the active tab's
// and that tab is temporary (an unsaved default graph): then it resets that tab's graph. So
// the active tab's name is passed when it is temporary; a saved one keeps its graph and the
// example opens beside it.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const OFFERED = "steerflow.defaultGraphOffered";
const EXAMPLE = "/workflows/txt2img.json";
const START_MS = 120000; // at most this long for the app's start-up to end
const SETTLE_MS = 3000; // an empty graph this long after start-up is the app's choice

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function settledGraph() {
  const started = Date.now();
  while (window.app !== app) {
    if (Date.now() - started > START_MS) return null;
    await sleep(100);
  }
  const ended = Date.now();
  while (Date.now() - ended < SETTLE_MS) {
    const nodes = app.graph?._nodes ?? [];
    if (nodes.length > 0) {
      await sleep(300); // the rest of the app's graph, which it adds in one go
      return app.graph?._nodes ?? [];
    }
    await sleep(100);
  }
  return app.graph?._nodes ?? [];
}

async function offer() {
  const nodes = await settledGraph();
  if (nodes === null) return; // the app never finished starting: try on the next visit
  const known = globalThis.LiteGraph?.registered_node_types ?? {};
  if (nodes.length === 0 || !nodes.every((node) => node.type in known)) {
    const response = await api.fetchApi(EXAMPLE);
    if (!response.ok) return;
    const doc = await response.json();
    if (!doc?.prompt) return;
    const active = app.extensionManager?.workflow?.activeWorkflow;
    const key = active?.isTemporary ? active.key : null; // "Unsaved Workflow.json"
    const name = typeof key === "string" && key.endsWith(".json")
      ? key.slice(0, -".json".length) : "txt2img (Steerflow)";
    await app.loadApiJson(doc.prompt, name);
    await persisted();
  }
  localStorage.setItem(OFFERED, "1");
}

// loadApiJson resets the tab without the app saving its draft (it saves one on a
// "graphChanged" event, debounced): a reload before any edit restored the app's own
// graph, and the offer was over. So the change is announced, and the browser marked as
// offered only once the draft had time to be written (a page closed sooner tries again).
const PERSIST_MS = 1000; // the app's debounce is 512 ms

async function persisted() {
  const tracker = app.extensionManager?.workflow?.activeWorkflow?.changeTracker;
  if (typeof tracker?.captureCanvasState === "function") tracker.captureCanvasState();
  else if (typeof tracker?.checkState === "function") tracker.checkState();
  api.dispatchCustomEvent("graphChanged", app.graph.serialize());
  await sleep(PERSIST_MS);
}

app.registerExtension({
  name: "steerflow.defaultGraph",
  setup() {
    if (localStorage.getItem(OFFERED)) return;
    offer().catch((err) => console.warn("[steerflow] default graph:", err));
  },
});
