// Steerflow's own extension for ComfyUI's frontend: a run that goes on with a warning
// (a `node_warning` websocket message, e.g. an 8x Empty Latent Image decoded by a 4x
// VAE) shows a toast naming the node, where ComfyUI's frontend would otherwise drop
// the message as an unknown type. Our own canvas shows these in its status bar.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LIFE_MS = 15000;

function nodeLabel(id) {
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  return node ? `${node.title ?? node.type} (#${id})` : `node ${id}`;
}

app.registerExtension({
  name: "steerflow.warnings",
  setup() {
    api.addEventListener("node_warning", ({ detail }) => {
      const message = String(detail?.message ?? "");
      console.warn("[steerflow]", detail?.node, message);
      const toast = app.extensionManager?.toast;
      if (toast?.add) {
        toast.add({ severity: "warn", summary: `Warning from ${nodeLabel(detail?.node)}`,
                    detail: message, life: LIFE_MS });
      }
    });
  },
});
