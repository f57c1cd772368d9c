/**
 * Read the text chunks of a PNG (tEXt, zTXt, iTXt) — where Steerflow (and
 * ComfyUI) embed the `prompt` and `workflow` of the image.
 */

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export class PngError extends Error {}

export function isPng(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && SIGNATURE.every((b, i) => bytes[i] === b);
}

function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return s;
}

async function inflate(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BlobPart]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The PNG's chunks as `[type, data]`, in order, up to IEND. */
export function pngChunks(bytes: Uint8Array): [string, Uint8Array][] {
  if (!isPng(bytes)) throw new PngError("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks: [string, Uint8Array][] = [];
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1(bytes.subarray(pos + 4, pos + 8));
    const start = pos + 8;
    const end = start + length;
    if (end + 4 > bytes.length) {
      // a chunk type is four letters: anything else means the bytes are not PNG chunks
      throw new PngError(/^[A-Za-z]{4}$/.test(type)
        ? `the PNG is truncated (it ends inside its ${type} chunk): the file is incomplete`
        : "the PNG is damaged (truncated, or unreadable chunk data): the file is corrupt");
    }
    chunks.push([type, bytes.subarray(start, end)]);
    pos = end + 4; // skip the CRC
    if (type === "IEND") break;
  }
  return chunks;
}

/** Every text chunk of a PNG, keyword → text. */
export async function readPngText(data: ArrayBuffer | Uint8Array): Promise<Record<string, string>> {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const out: Record<string, string> = {};
  const utf8 = new TextDecoder("utf-8");
  for (const [type, chunk] of pngChunks(bytes)) {
    if (type !== "tEXt" && type !== "zTXt" && type !== "iTXt") continue;
    const nul = chunk.indexOf(0);
    if (nul < 0) continue;
    const keyword = latin1(chunk.subarray(0, nul));
    if (type === "tEXt") {
      out[keyword] = latin1(chunk.subarray(nul + 1));
    } else if (type === "zTXt") {
      out[keyword] = latin1(await inflate(chunk.subarray(nul + 2)));
    } else {
      const compressed = chunk[nul + 1] === 1;
      let p = nul + 3;
      const langEnd = chunk.indexOf(0, p);
      if (langEnd < 0) continue;
      const transEnd = chunk.indexOf(0, langEnd + 1);
      if (transEnd < 0) continue;
      p = transEnd + 1;
      const body = chunk.subarray(p);
      out[keyword] = utf8.decode(compressed ? await inflate(body) : body);
    }
  }
  return out;
}

// --- writing (used by tests and to export a graph inside an image) -------------------------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

export function makeChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** A tEXt chunk (latin-1 keyword and text). */
export function textChunk(keyword: string, text: string): Uint8Array {
  const s = `${keyword}\0${text}`;
  const data = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) data[i] = s.charCodeAt(i) & 0xff;
  return makeChunk("tEXt", data);
}

/** Insert chunks right after IHDR. */
export function insertChunks(png: Uint8Array, chunks: Uint8Array[]): Uint8Array {
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const ihdrEnd = 8 + 12 + view.getUint32(8);
  const extra = chunks.reduce((a, c) => a + c.length, 0);
  const out = new Uint8Array(png.length + extra);
  out.set(png.subarray(0, ihdrEnd), 0);
  let p = ihdrEnd;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  out.set(png.subarray(ihdrEnd), p);
  return out;
}
