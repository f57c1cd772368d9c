import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { crc32, insertChunks, isPng, makeChunk, pngChunks, readPngText, textChunk } from "./png";
import { type Converter, loadWorkflowBytes, loadWorkflowPng } from "./load";
import { comfyDefault, testDefs } from "./testdefs";

/** The server's /workflow/convert, stubbed: a one-node document, and what it was sent. */
const sent: unknown[] = [];
const convert: Converter = async (workflow) => {
  sent.push(workflow);
  return { document: { format: "steerflow.workflow", version: 1, prompt: { "3": { class_type: "KSampler", inputs: {} } },
    layout: { nodes: {} } }, warnings: [] };
};

const saved = new Uint8Array(readFileSync(new URL("./fixtures/saved.png", import.meta.url)));

async function deflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

describe("PNG text chunks", () => {
  it("reads tEXt, zTXt and iTXt written by Pillow (as the engine saves images)", async () => {
    expect(isPng(saved)).toBe(true);
    const text = await readPngText(saved);
    expect(JSON.parse(text.prompt)["1"].class_type).toBe("PrimitiveInt");
    expect(JSON.parse(text.workflow).format).toBe("steerflow.workflow");
    expect(text.comment).toBe("zipped text");
    expect(text.note).toBe("ünïcödé ✓");
    expect(text.znote).toBe("compressed ✓ ".repeat(20));
  });

  it("CRCs are right", () => {
    expect(crc32(new TextEncoder().encode("IEND"))).toBe(0xae426082);
    const chunks = pngChunks(saved);
    expect(chunks[0][0]).toBe("IHDR");
    expect(chunks.at(-1)![0]).toBe("IEND");
    for (const [type] of chunks) expect(type).toMatch(/^[A-Za-z]{4}$/);
  });

  it("writes chunks the reader reads back, and compressed iTXt", async () => {
    const body = await deflate(new TextEncoder().encode("✓ zipped"));
    const head = new TextEncoder().encode("k2\0\x01\x00\0\0");
    const itxt = new Uint8Array(head.length + body.length);
    itxt.set(head);
    itxt.set(body, head.length);
    const png = insertChunks(saved, [textChunk("k1", "v1"), makeChunk("iTXt", itxt)]);
    const text = await readPngText(png);
    expect(text.k1).toBe("v1");
    expect(text.k2).toBe("✓ zipped");
    expect(text.prompt).toBeDefined();
  });

  it("rejects non-PNGs and truncated files", async () => {
    await expect(readPngText(new Uint8Array([1, 2, 3]))).rejects.toThrow(/not a PNG/);
    await expect(readPngText(saved.subarray(0, 60))).rejects.toThrow(/truncated/);
    const damaged = saved.slice();
    damaged.set([0x7f, 0xff, 0xff, 0xff, 0x00, 0xff, 0xfe, 0x01], 8); // garbage length and type
    await expect(readPngText(damaged)).rejects.toThrow(/damaged/);
  });
});

describe("workflows in PNGs", () => {
  const defs = testDefs();
  it("restores the document a Steerflow PNG carries", async () => {
    const { graph, kind } = await loadWorkflowPng(saved, defs, convert);
    expect(kind).toBe("document");
    expect(graph.nodes.map((n) => [n.id, n.type, n.title])).toEqual([["1", "PrimitiveInt", "Seven"], ["2", "ShowValue", undefined]]);
    expect(graph.nodes[0].pos).toEqual([10, 20]);
    expect(graph.links).toEqual([{ source: "1", slot: 0, target: "2", input: "value" }]);
  });

  it("falls back to the prompt chunk, and reads ComfyUI's PNGs", async () => {
    const prompt = { "1": { class_type: "PrimitiveInt", inputs: { value: 5 } } };
    const apiOnly = insertChunks(stripText(saved), [textChunk("prompt", JSON.stringify(prompt))]);
    const a = await loadWorkflowBytes("x.png", apiOnly, defs, convert);
    expect(a.kind).toBe("api");
    expect(a.graph.nodes[0].values.value).toBe(5);
    const comfy = insertChunks(stripText(saved), [textChunk("workflow", JSON.stringify(comfyDefault()))]);
    const c = await loadWorkflowBytes("c.png", comfy, defs, convert);
    expect(c.kind).toBe("comfyui");
    expect(sent.at(-1)).toEqual(comfyDefault()); // the UI format goes to the server's converter
    expect(c.graph.nodes.map((n) => n.id)).toEqual(["3"]);
    await expect(loadWorkflowBytes("n.png", stripText(saved), defs, convert)).rejects.toThrow(/carries no workflow/);
  });

  it("prefers our document (steerflow chunk) to ComfyUI's view of it (workflow chunk)", async () => {
    const text = await readPngText(saved);
    const both = insertChunks(stripText(saved), [textChunk("prompt", text.prompt),
      textChunk("workflow", JSON.stringify(comfyDefault())), textChunk("steerflow", text.workflow)]);
    const before = sent.length;
    const got = await loadWorkflowBytes("both.png", both, defs, convert);
    expect(got.kind).toBe("document");
    expect(got.graph.nodes.map((n) => [n.id, n.title])).toEqual([["1", "Seven"], ["2", undefined]]);
    expect(sent.length).toBe(before); // ComfyUI's view was never converted
  });

  it("opens JSON files of every kind", async () => {
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    const doc = (await loadWorkflowPng(saved, defs, convert)).graph;
    expect(doc.nodes).toHaveLength(2);
    const body = { prompt: { "1": { class_type: "PrimitiveInt", inputs: { value: 9 } } }, client_id: "x" };
    expect((await loadWorkflowBytes("b.json", enc(body), defs, convert)).graph.nodes[0].values.value).toBe(9);
    await expect(loadWorkflowBytes("bad.json", new TextEncoder().encode("{"), defs, convert)).rejects.toThrow(/not valid JSON/);
    // another kind of file: what can be opened, not the JSON parser's complaint
    await expect(loadWorkflowBytes("notes.txt", new TextEncoder().encode("a note"), defs, convert))
      .rejects.toThrow("notes.txt is not a workflow: open a .json workflow");
    // a workflow saved under another name still opens
    expect((await loadWorkflowBytes("b.txt", enc(body), defs, convert)).graph.nodes[0].values.value).toBe(9);
    await expect(loadWorkflowBytes("x.json", enc({ hello: 1 }), defs, convert)).rejects.toThrow(/not a workflow/);
  });
});

/** The same PNG without its text chunks. */
function stripText(png: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [png.subarray(0, 8)];
  for (const [type, data] of pngChunks(png)) {
    if (type === "tEXt" || type === "zTXt" || type === "iTXt") continue;
    parts.push(makeChunk(type, data));
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let p = 0;
  for (const part of parts) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}
