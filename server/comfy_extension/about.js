// Steerflow's own extension for ComfyUI's frontend: its About panel names the backend
// "ComfyUI <comfyui_version>", a version /system_stats fills with Steerflow's own (the
// frontend compares it with ComfyUI's releases, so it cannot name another program). A
// badge beside it says which server this is, with its version.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const badge = { label: "Steerflow", icon: "pi pi-server" };

app.registerExtension({ name: "steerflow.about", aboutPageBadges: [badge] });

// the panel reads the badges when it opens: the version is filled in long before
api.fetchApi("/system_stats")
  .then((response) => (response.ok ? response.json() : null))
  .then((stats) => {
    const version = stats?.system?.steerflow_version;
    if (typeof version === "string" && version) badge.label = `Steerflow ${version}`;
  })
  .catch(() => {});
