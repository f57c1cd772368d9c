import { describe, expect, it } from "vitest";
import { testDefs } from "../lib/testdefs";
import { dropInput, dropOutput } from "./linkDrop";

const defs = testDefs();
const def = (type: string) => defs.get(type)!;
const none = new Set<string>();

describe("a link dropped on a node (ComfyUI's connectByType)", () => {
  it("goes into the first free input of its type", () => {
    expect(dropInput(def("KSampler"), {}, none, "CONDITIONING")).toBe("positive");
    expect(dropInput(def("KSampler"), {}, new Set(["positive"]), "CONDITIONING")).toBe("negative");
    expect(dropInput(def("KSampler"), {}, none, "MODEL")).toBe("model");
  });

  it("replaces the first matching link when every matching input is linked", () => {
    expect(dropInput(def("KSampler"), {}, new Set(["positive", "negative"]), "CONDITIONING")).toBe("positive");
  });

  it("goes into a widget's input when no socket takes it", () => {
    expect(dropInput(def("KSampler"), {}, none, "INT")).toBe("seed");
    expect(dropInput(def("KSampler"), {}, new Set(["seed"]), "INT")).toBe("steps");
  });

  it("prefers a socket to a widget of the same type", () => {
    expect(dropInput(def("ImageOrMask"), {}, none, "INT")).toBe("forced");
  });

  it("goes into the widget it was dropped on when that takes the type", () => {
    expect(dropInput(def("KSampler"), {}, none, "INT", "steps")).toBe("steps");
    expect(dropInput(def("CLIPTextEncode"), {}, none, "STRING", "text")).toBe("text");
  });

  it("falls back to the node's matching input when the widget dropped on does not take it", () => {
    expect(dropInput(def("KSampler"), {}, none, "MODEL", "steps")).toBe("model");
  });

  it("puts a text into a list of choices only when nothing else takes it", () => {
    expect(dropInput(def("CLIPTextEncode"), {}, none, "STRING")).toBe("text");
    expect(dropInput(def("KSampler"), {}, none, "STRING")).toBe("sampler_name");
  });

  it("finds nothing when no input takes the type", () => {
    expect(dropInput(def("VAEDecode"), {}, none, "MODEL")).toBeUndefined();
    expect(dropInput(def("CheckpointLoaderSimple"), {}, none, "IMAGE")).toBeUndefined();
  });
});

describe("a link dragged from an input and dropped on a node", () => {
  it("comes from the node's first matching output", () => {
    expect(dropOutput(def("CheckpointLoaderSimple"), "VAE")).toBe(2);
    expect(dropOutput(def("CheckpointLoaderSimple"), "MODEL")).toBe(0);
    expect(dropOutput(def("ImageOrMask"), "MASK")).toBe(0);
    expect(dropOutput(def("AnyOut"), "LATENT")).toBe(0);
  });

  it("finds nothing when no output matches", () => {
    expect(dropOutput(def("CheckpointLoaderSimple"), "LATENT")).toBeUndefined();
  });
});
