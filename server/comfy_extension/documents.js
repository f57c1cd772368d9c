// Steerflow's own extension for ComfyUI's frontend: a Steerflow workflow document (the
// files in workflows/ and what our canvas saves: {"format": "steerflow.workflow",
// "prompt", "layout"}) dropped or opened in the app loads its prompt, as an API-format
// prompt would. The app itself knows neither shape: it aborted with "e is not iterable"
// and emptied the open tab.
import { app } from "../../scripts/app.js";

const FORMAT = "steerflow.workflow";

async function steerflowDocument(file) {
  if (!(file instanceof Blob) || !/\.json$/i.test(file.name ?? "") || file.size > 64 << 20) {
    return null;
  }
  try {
    const doc = JSON.parse(await file.text());
    return doc?.format === FORMAT && doc.prompt && typeof doc.prompt === "object" ? doc : null;
  } catch {
    return null; // not JSON: the app reports it its own way
  }
}

app.registerExtension({
  name: "steerflow.documents",
  setup() {
    const handleFile = app.handleFile?.bind(app);
    if (!handleFile) return;
    app.handleFile = async function (file, ...rest) {
      const doc = await steerflowDocument(file);
      if (doc) return app.loadApiJson(doc.prompt, file.name.replace(/\.json$/i, ""));
      return handleFile(file, ...rest);
    };
  },
});
