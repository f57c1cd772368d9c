// Steerflow's own extension for ComfyUI's frontend: the app's built-in default graph
// (Z-Image Turbo's in current releases) needs nodes and models Steerflow does not have.
// On a browser's first visit, when the graph the app opened is empty or holds node types
// this server lacks, Steerflow's txt2img example on the built-in model replaces it, so
// Queue works at once. Once per browser: a graph the user loads later is never replaced.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const OFFERED = "steerflow.defaultGraphOffered";
const EXAMPLE = "/workflows/txt2img.json";
const WAIT_MS = 5000; // for the app's own first graph to be in place

async function openedGraph() {
  const started = Date.now();
  while (Date.now() - started < WAIT_MS) {
    if ((app.graph?._nodes?.length ?? 0) > 0) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return app.graph?._nodes ?? [];
}

app.registerExtension({
  name: "steerflow.defaultGraph",
  async setup() {
    try {
      if (localStorage.getItem(OFFERED)) return;
      localStorage.setItem(OFFERED, "1");
      const nodes = await openedGraph();
      const known = globalThis.LiteGraph?.registered_node_types ?? {};
      if (nodes.length > 0 && nodes.every((node) => node.type in known)) return;
      const response = await api.fetchApi(EXAMPLE);
      if (!response.ok) return;
      const doc = await response.json();
      if (doc?.prompt) await app.loadApiJson(doc.prompt, "txt2img (Steerflow)");
    } catch (err) {
      console.warn("[steerflow] default graph:", err);
    }
  },
});
