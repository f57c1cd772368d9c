/**
 * A file dropped on the canvas: a workflow to open, or (ComfyUI's behaviour) an image for a
 * Load Image node — dropped onto that node, or onto empty canvas while it is the one
 * selected node and the image carries no workflow. Plain data, testable alone.
 */

import { isPng, readPngText } from "./png";
import type { Defs, NodeDef } from "./schema";

/** The input of a node type that takes an uploaded image (Load Image's `image`), or null. */
export function imageUploadInput(def: NodeDef | undefined): string | null {
  return def?.inputs.find((i) => i.widget && i.options.upload === "image")?.name ?? null;
}

/** Whether a file is an image (by its MIME type, else its extension). */
export function isImageFile(file: { name: string; type: string }): boolean {
  if (file.type) return file.type.startsWith("image/");
  return /\.(png|jpe?g|webp|gif|bmp|avif)$/i.test(file.name);
}

/** Whether an image's bytes carry a workflow the canvas can open (a PNG's `steerflow`, `workflow` or `prompt` text). */
export async function carriesWorkflow(bytes: Uint8Array): Promise<boolean> {
  if (!isPng(bytes)) return false;
  try {
    const text = await readPngText(bytes);
    return !!(text.steerflow || text.workflow || text.prompt);
  } catch {
    return false; // a damaged PNG opens nothing
  }
}

export type UploadTarget = { node: string; input: string };
type NodeRef = { id: string; type: string };

/** The image-upload input of a node, as an upload target, or null. */
export function uploadTargetOf(node: NodeRef | undefined, defs: Defs): UploadTarget | null {
  const input = node ? imageUploadInput(defs.get(node.type)) : null;
  return node && input ? { node: node.id, input } : null;
}

/**
 * Where a dropped image (one carrying no workflow) goes when it was not dropped onto an
 * image-upload node: the selected node, when exactly one node is selected and it takes an
 * uploaded image; else nowhere (null).
 */
export function selectedUploadTarget(nodes: readonly (NodeRef & { selected?: boolean })[], defs: Defs): UploadTarget | null {
  const selected = nodes.filter((n) => n.selected);
  return selected.length === 1 ? uploadTargetOf(selected[0], defs) : null;
}

/**
 * The URL of an image this server serves (`/view?filename=…`, as the gallery, History and the
 * nodes show them) among a drop's `text/uri-list`, resolved against the page (`base`); null
 * for anything else (another site's image is never fetched).
 */
export function serverImageUrl(uriList: string, base: string): URL | null {
  const first = uriList.split(/\r?\n/).find((line) => line && !line.startsWith("#"));
  if (!first) return null;
  let url: URL;
  try {
    url = new URL(first.trim(), base);
  } catch {
    return null;
  }
  const page = new URL(base);
  if (url.origin !== page.origin || !/\/view$/.test(url.pathname) || !url.searchParams.get("filename")) return null;
  return url;
}

/** The image at `url` (serverImageUrl's) as a file named as on the server. */
export async function fileOfUrl(url: URL): Promise<File> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`the server answered ${res.status}`);
  const blob = await res.blob();
  const name = (url.searchParams.get("filename") ?? "image.png").split("/").pop() || "image.png";
  return new File([blob], name, { type: blob.type || "image/png" });
}
