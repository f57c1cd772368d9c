import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { carriesWorkflow, imageUploadInput, isImageFile, selectedUploadTarget, serverImageUrl, uploadTargetOf } from "./drop";
import { insertChunks, pngChunks, textChunk } from "./png";
import { testDefs } from "./testdefs";

const defs = testDefs();
const saved = new Uint8Array(readFileSync(new URL("./fixtures/saved.png", import.meta.url)));

/** saved.png without its text chunks: a plain image. */
function plainPng(): Uint8Array {
  const parts: Uint8Array[] = [saved.subarray(0, 8)];
  let pos = 8;
  for (const [type, data] of pngChunks(saved)) {
    const size = 12 + data.length;
    if (type !== "tEXt" && type !== "zTXt" && type !== "iTXt") parts.push(saved.subarray(pos, pos + size));
    pos += size;
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

describe("dropping an image on the canvas", () => {
  it("finds the input that takes an uploaded image", () => {
    expect(imageUploadInput(defs.get("LoadImage"))).toBe("image");
    expect(imageUploadInput(defs.get("KSampler"))).toBeNull();
    expect(imageUploadInput(undefined)).toBeNull();
  });

  it("tells images from other files", () => {
    expect(isImageFile({ name: "cat.png", type: "image/png" })).toBe(true);
    expect(isImageFile({ name: "photo", type: "image/jpeg" })).toBe(true);
    expect(isImageFile({ name: "x.webp", type: "" })).toBe(true);
    expect(isImageFile({ name: "workflow.json", type: "application/json" })).toBe(false);
    expect(isImageFile({ name: "notes.txt", type: "" })).toBe(false);
  });

  it("knows whether an image carries a workflow", async () => {
    expect(await carriesWorkflow(saved)).toBe(true);
    const plain = plainPng();
    expect(await carriesWorkflow(plain)).toBe(false);
    expect(await carriesWorkflow(insertChunks(plain, [textChunk("prompt", "{}")]))).toBe(true);
    expect(await carriesWorkflow(insertChunks(plain, [textChunk("comment", "hi")]))).toBe(false);
    expect(await carriesWorkflow(new Uint8Array([0xff, 0xd8, 0xff, 0xe0]))).toBe(false); // a JPEG
    expect(await carriesWorkflow(saved.subarray(0, 60))).toBe(false); // truncated
  });

  it("uploads into the node it was dropped on, or the one selected image node", () => {
    const nodes = [
      { id: "1", type: "LoadImage" }, { id: "2", type: "KSampler", selected: true }, { id: "3", type: "LoadImage" },
    ];
    expect(uploadTargetOf(nodes[0], defs)).toEqual({ node: "1", input: "image" });
    expect(uploadTargetOf(nodes[1], defs)).toBeNull();
    expect(uploadTargetOf(undefined, defs)).toBeNull();
    // a KSampler selected: nowhere to put it
    expect(selectedUploadTarget(nodes, defs)).toBeNull();
    const one = nodes.map((n) => ({ ...n, selected: n.id === "3" }));
    expect(selectedUploadTarget(one, defs)).toEqual({ node: "3", input: "image" });
    // two selected: ambiguous
    const two = nodes.map((n) => ({ ...n, selected: n.id !== "2" }));
    expect(selectedUploadTarget(two, defs)).toBeNull();
  });
});

describe("serverImageUrl", () => {
  const page = "http://127.0.0.1:8188/";
  it("takes this server's /view images only", () => {
    expect(serverImageUrl("http://127.0.0.1:8188/view?filename=a.png&type=output", page)?.searchParams.get("filename")).toBe("a.png");
    expect(serverImageUrl("# comment\r\n/api/view?filename=b.png&subfolder=x", page)?.pathname).toBe("/api/view");
    expect(serverImageUrl("https://example.com/view?filename=a.png", page)).toBeNull();
    expect(serverImageUrl("http://127.0.0.1:8188/workflows/x.json", page)).toBeNull();
    expect(serverImageUrl("http://127.0.0.1:8188/view?type=output", page)).toBeNull();
    expect(serverImageUrl("", page)).toBeNull();
  });
});
