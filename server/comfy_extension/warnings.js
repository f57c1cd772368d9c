// Steerflow's own extension for ComfyUI's frontend: a run that goes on with a warning
// (a `node_warning` websocket message, e.g. an 8x Empty Latent Image decoded by a 4x
// VAE), or a prompt queued with one (the `warnings` of /prompt's reply), shows a toast
// naming the node, where ComfyUI's frontend would otherwise drop it. Our own canvas
// shows these in its status bar and toasts.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LIFE_MS = 15000;

function nodeLabel(id) {
  const node = app.graph?.getNodeById?.(Number(id)) ?? app.graph?.getNodeById?.(id);
  return node ? `${node.title ?? node.type} (#${id})` : `node ${id}`;
}

function warn(node, message) {
  console.warn("[steerflow]", node, message);
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: "warn", summary: node == null ? "Warning" : `Warning from ${nodeLabel(node)}`,
                detail: message, life: LIFE_MS });
  }
}

app.registerExtension({
  name: "steerflow.warnings",
  setup() {
    api.addEventListener("node_warning", ({ detail }) => warn(detail?.node, String(detail?.message ?? "")));
    // What /prompt accepted with a warning (an unknown embedding:name, dropped as ComfyUI
    // does) comes in its reply, which the frontend does not show: shown here.
    const queuePrompt = api.queuePrompt?.bind(api);
    if (queuePrompt) {
      api.queuePrompt = async (...args) => {
        const reply = await queuePrompt(...args);
        try {
          for (const w of Array.isArray(reply?.warnings) ? reply.warnings : []) {
            warn(w?.node_id ?? null, String(w?.message ?? ""));
          }
        } catch (e) {
          console.warn("[steerflow] could not show the prompt's warnings", e);
        }
        return reply;
      };
    }
  },
});
