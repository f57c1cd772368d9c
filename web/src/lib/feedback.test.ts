import { describe, expect, it } from "vitest";
import {
  annotatedName, applyFeedbackOps, isAnnotated, BATCH_TYPE, FABRIC_TYPE, feedbackState, feedbackTarget, imageFeedback, imageLines,
  NO_FEEDBACK, parseAnnotated, toggleFeedback,
} from "./feedback";
import { createNode, type Graph, graphToPrompt } from "./graph";
import { parseObjectInfo } from "./schema";
import { testObjectInfo } from "./testdefs";

const info = testObjectInfo();
// The two nodes' /object_info entries, as the server writes them (descriptions trimmed).
info[FABRIC_TYPE] = {
  name: FABRIC_TYPE, display_name: "FABRIC Feedback", category: "model_patches/unet",
  input: {
    required: {
      model: ["MODEL", {}], clip: ["CLIP", {}], vae: ["VAE", {}],
      max_weight: ["FLOAT", { default: 0.8, min: 0, max: 10, step: 0.01 }],
    },
    optional: { liked: ["IMAGE", {}], disliked: ["IMAGE", {}] },
  },
  input_order: { required: ["model", "clip", "vae", "max_weight"], optional: ["liked", "disliked"] },
  output: ["MODEL"], output_name: ["MODEL"],
};
info[BATCH_TYPE] = {
  name: BATCH_TYPE, display_name: "Load Image Batch", category: "image",
  input: {
    required: {
      folder: ["STRING", { default: "" }], images: ["STRING", { default: "", multiline: true }],
      size: [["resize", "center_crop", "refuse"], { default: "resize" }],
      caption_template: ["STRING", { default: "{caption}" }],
    },
  },
  input_order: { required: ["folder", "images", "size", "caption_template"] },
  output: ["IMAGE", "MASK", "STRING"], output_name: ["IMAGE", "MASK", "captions"],
};
const defs = parseObjectInfo(info);

const cat = { filename: "cat_00001_.png", subfolder: "", type: "output" };
const dog = { filename: "dog_00002_.png", subfolder: "pets", type: "output" };
const tmp = { filename: "preview_ab_00001_.png", subfolder: "", type: "temp" };

/** Checkpoint → FABRIC (id 20 at x=600) → nothing else needed for these tests. */
function fabricGraph(): Graph {
  const ckpt = createNode(defs, "CheckpointLoaderSimple", "1", [0, 0]);
  const fabric = createNode(defs, FABRIC_TYPE, "20", [600, 100]);
  return {
    nodes: [ckpt, fabric],
    links: [
      { source: "1", slot: 0, target: "20", input: "model" },
      { source: "1", slot: 1, target: "20", input: "clip" },
      { source: "1", slot: 2, target: "20", input: "vae" },
    ],
    groups: [],
  };
}

function toggle(graph: Graph, img: typeof cat, kind: "liked" | "disliked", selected?: Set<string>): Graph {
  const edit = toggleFeedback(graph, defs, img, kind, selected);
  if (!edit.ok) throw new Error(edit.reason);
  return applyFeedbackOps(graph, edit.ops);
}

describe("annotated names", () => {
  it("write and read ComfyUI's 'sub/name.png [type]'", () => {
    expect(annotatedName(cat)).toBe("cat_00001_.png [output]");
    expect(annotatedName(dog)).toBe("pets/dog_00002_.png [output]");
    expect(annotatedName(tmp)).toBe("preview_ab_00001_.png [temp]");
    expect(annotatedName({ filename: "x.png" })).toBe("x.png [output]");
    expect(parseAnnotated("pets/dog_00002_.png [output]")).toEqual(dog);
    expect(parseAnnotated("a/b/c.png  [temp] ")).toEqual({ filename: "c.png", subfolder: "a/b", type: "temp" });
    expect(parseAnnotated("plain.png")).toEqual({ filename: "plain.png", subfolder: "", type: "input" });
    expect(parseAnnotated("sub/plain.png")).toEqual({ filename: "plain.png", subfolder: "sub", type: "input" });
    expect(isAnnotated("x.png [output]") && isAnnotated("x.png[temp]")).toBe(true);
    expect(isAnnotated("x.png") || isAnnotated("x.png [models]")).toBe(false);
  });

  it("lines ignore blanks and surrounding space", () => {
    expect(imageLines(" a.png \n\n b.png [output]\r\n")).toEqual(["a.png", "b.png [output]"]);
    expect(imageLines(undefined)).toEqual([]);
  });
});

describe("target FABRIC node", () => {
  it("none: no state and a clear refusal", () => {
    const g: Graph = { nodes: [createNode(defs, "KSampler", "1", [0, 0])], links: [], groups: [] };
    expect(feedbackState(g)).toBe(NO_FEEDBACK);
    const edit = toggleFeedback(g, defs, cat, "liked");
    expect(edit.ok).toBe(false);
    if (!edit.ok) expect(edit.reason).toMatch(/no FABRIC Feedback node/);
  });

  it("the selected one, else the first", () => {
    const g = fabricGraph();
    g.nodes.push(createNode(defs, FABRIC_TYPE, "30", [600, 900]));
    expect(feedbackTarget(g)?.id).toBe("20");
    expect(feedbackTarget(g, new Set(["1", "30"]))?.id).toBe("30");
    const liked = toggle(g, cat, "liked", new Set(["30"]));
    expect(feedbackState(liked, new Set(["30"])).liked).toEqual(new Set([annotatedName(cat)]));
    expect(feedbackState(liked).liked.size).toBe(0); // node 20 untouched
  });
});

describe("toggling", () => {
  it("creates and links a Load Image Batch near the FABRIC node when none is linked", () => {
    const g = fabricGraph();
    const edit = toggleFeedback(g, defs, cat, "liked");
    expect(edit.ok && edit.now).toBe("liked");
    const next = toggle(g, cat, "liked");
    const batch = next.nodes.find((n) => n.type === BATCH_TYPE)!;
    expect(batch.id).toBe("21");
    expect(batch.values).toMatchObject({ images: "cat_00001_.png [output]", folder: "", size: "resize" });
    expect(batch.pos).toEqual([220, 100]);
    expect(next.links).toContainEqual({ source: "21", slot: 0, target: "20", input: "liked" });
    // what runs: the batch's IMAGE output feeds FABRIC's liked input
    const prompt = graphToPrompt(next, defs);
    expect(prompt["20"].inputs.liked).toEqual(["21", 0]);
    expect(prompt["21"].inputs.images).toBe("cat_00001_.png [output]");
    expect(imageFeedback(feedbackState(next), cat)).toBe("liked");
    expect(imageFeedback(feedbackState(next), dog)).toBe(null);
  });

  it("adds lines to a linked batch, keeps the user's lines, and removes on a second click", () => {
    let g = fabricGraph();
    const batch = createNode(defs, BATCH_TYPE, "5", [0, 300]);
    batch.values.images = "mine.png\n";
    g.nodes.push(batch);
    g.links.push({ source: "5", slot: 0, target: "20", input: "liked" });
    g = toggle(g, cat, "liked");
    g = toggle(g, dog, "liked");
    expect(g.nodes.find((n) => n.id === "5")!.values.images)
      .toBe("mine.png\ncat_00001_.png [output]\npets/dog_00002_.png [output]");
    expect(g.nodes.filter((n) => n.type === BATCH_TYPE)).toHaveLength(1);
    const edit = toggleFeedback(g, defs, cat, "liked");
    expect(edit.ok && edit.now).toBe(null);
    g = toggle(g, cat, "liked");
    expect(g.nodes.find((n) => n.id === "5")!.values.images).toBe("mine.png\npets/dog_00002_.png [output]");
    expect(feedbackState(g).liked).toEqual(new Set(["mine.png", "pets/dog_00002_.png [output]"]));
  });

  it("liked and disliked are exclusive: disliking a liked image moves it", () => {
    let g = toggle(fabricGraph(), cat, "liked");
    g = toggle(g, tmp, "disliked");
    g = toggle(g, cat, "disliked");
    const state = feedbackState(g);
    expect(state.liked.size).toBe(0);
    expect(state.disliked).toEqual(new Set(["preview_ab_00001_.png [temp]", "cat_00001_.png [output]"]));
    const disliked = g.nodes.find((n) => n.title === "Disliked images")!;
    expect(disliked.pos).toEqual([220, 420]);
    expect(g.links.filter((l) => l.target === "20" && l.input === "disliked")).toEqual([
      { source: disliked.id, slot: 0, target: "20", input: "disliked" },
    ]);
  });

  it("refuses when the input is fed by another node or the batch's list is linked", () => {
    const g = fabricGraph();
    g.nodes.push(createNode(defs, "LoadImage", "7", [0, 300]));
    g.links.push({ source: "7", slot: 0, target: "20", input: "liked" });
    const edit = toggleFeedback(g, defs, cat, "liked");
    expect(edit.ok).toBe(false);
    if (!edit.ok) expect(edit.reason).toMatch(/fed by Load Image \(node 7\), not a Load Image Batch/);
    expect(toggleFeedback(g, defs, cat, "disliked").ok).toBe(true); // the other input is free

    const h = fabricGraph();
    h.nodes.push(createNode(defs, BATCH_TYPE, "8", [0, 300]), createNode(defs, "PrimitiveString", "9", [0, 600]));
    h.links.push({ source: "8", slot: 0, target: "20", input: "liked" }, { source: "9", slot: 0, target: "8", input: "images" });
    const refused = toggleFeedback(h, defs, cat, "liked");
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.reason).toMatch(/takes its images from a link/);
  });

  it("needs the server's Load Image Batch to create one", () => {
    const bare = new Map(defs);
    bare.delete(BATCH_TYPE);
    const edit = toggleFeedback(fabricGraph(), bare, cat, "liked");
    expect(edit.ok).toBe(false);
  });
});
