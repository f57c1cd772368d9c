/**
 * The workflow library: the user's workflows saved on the server, under `workflows/` of
 * ComfyUI's per-user file API (`/userdata`), where ComfyUI's own front end keeps the
 * workflows of its sidebar. A file there is ComfyUI's UI-format JSON (what ComfyUI's Save
 * writes), so each front end opens the other's.
 *
 * The canvas's own document rides along in the file's `extra.steerflow`, with a check of
 * the UI-format graph it was written with: opened here and unchanged since, the file opens
 * as the very graph saved (its layout, reroutes, view); changed by ComfyUI's front end (or
 * written by it), the UI-format graph is what opens, converted by the server as any ComfyUI
 * file is.
 */

/** The library's folder in the user's files (ComfyUI's). */
export const LIBRARY_DIR = "workflows";
/** The longest name (without `.json`) the library takes: one path part stays well under 255 bytes. */
export const LIBRARY_NAME_MAX = 120;
/** The key of our document inside a saved file's `extra`. */
export const EMBED_KEY = "steerflow";

export type LibraryEntry = {
  /** The file's path under `workflows/` ("sub/name.json"). */
  path: string;
  /** What the list shows: the path without `.json` ("sub/name"). */
  label: string;
  /** The file's name without folder and `.json`: the name the opened workflow takes. */
  name: string;
  /** Last change, ms since the epoch (0 when unknown). */
  modified: number;
  size: number;
};

export type LibrarySort = "newest" | "name";

/** The user-data path of a library file (`workflows/<path>`). */
export const userPath = (path: string) => `${LIBRARY_DIR}/${path}`;

/** The `/userdata/{file}` URL part of a user file: one URL segment, its slashes encoded (as ComfyUI's front end sends it). */
export function userdataSegment(userFile: string): string {
  return `userdata/${encodeURIComponent(userFile)}`;
}

const BAD_CHARS = /[\\/:*?"<>|\u0000-\u001f\u007f\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

/**
 * A typed workflow name checked for the library: the file name it is saved as
 * (`<name>.json`) or why it cannot be one. Nothing is replaced silently: a name with a
 * character no file name on every system can carry is refused, saying which.
 */
export function checkName(typed: string): { file: string; name: string } | { error: string } {
  const name = typed.trim().replace(/\.json$/i, "").trim();
  if (!name) return { error: "a workflow needs a name" };
  const bad = BAD_CHARS.exec(name);
  if (bad) {
    const shown = /[\u0000-\u001f\u007f\u200e-\u202e\u2066-\u2069]/.test(bad[0]) ? "control characters" : `“${bad[0]}”`;
    return { error: `a workflow name cannot hold ${shown} (nor any of \\ / : * ? " < > |)` };
  }
  if (name.startsWith(".")) return { error: "a workflow name cannot start with a dot (it would be a hidden file)" };
  if (name.endsWith(".")) return { error: "a workflow name cannot end with a dot" };
  if (name.length > LIBRARY_NAME_MAX) return { error: `a workflow name is at most ${LIBRARY_NAME_MAX} characters` };
  return { file: `${name}.json`, name };
}

/** The same folder as `path` with another file name. */
export function siblingPath(path: string, file: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? file : `${path.slice(0, slash + 1)}${file}`;
}

/**
 * Where Save writes the graph named `file` ("name.json"): over the graph's own library file
 * `from` (opened from it or saved as it) when the name is that file's, in its folder
 * ("proj/sub.json" stays there: Save wrote a new top-level "sub.json"); a new name renames
 * that file in its folder (`renameFrom`), as ComfyUI renames a saved workflow; a graph from no
 * library file is a new file at the top.
 */
export function saveTarget(from: string | null, file: string): { path: string; renameFrom: string | null } {
  if (!from) return { path: file, renameFrom: null };
  const path = siblingPath(from, file);
  return { path, renameFrom: path === from ? null : from };
}

/** The name a file's workflow takes when opened: its file name without folder and `.json`. */
export function nameOfPath(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1).replace(/\.json$/i, "");
}

/**
 * The library's listing from `GET /userdata?dir=workflows&recurse=true&split=false&full_info=true`
 * (ComfyUI's own request): its `.json` files, as entries. Anything else in the reply is
 * left out; a reply that is no list is an empty library.
 */
export function parseListing(body: unknown): LibraryEntry[] {
  if (!Array.isArray(body)) return [];
  const out: LibraryEntry[] = [];
  for (const item of body) {
    const o = typeof item === "string" ? { path: item } : item as Record<string, unknown> | null;
    const path = o && typeof o.path === "string" ? o.path : null;
    if (!path || !/\.json$/i.test(path)) continue;
    out.push({
      path,
      label: path.replace(/\.json$/i, ""),
      name: nameOfPath(path),
      modified: typeof o!.modified === "number" ? o!.modified : 0,
      size: typeof o!.size === "number" ? o!.size : 0,
    });
  }
  return out;
}

/** The entries in the order the list shows: newest first (then by name), or by path as ComfyUI's sidebar does. */
export function sortEntries(entries: readonly LibraryEntry[], by: LibrarySort): LibraryEntry[] {
  const byName = (a: LibraryEntry, b: LibraryEntry) =>
    a.label.localeCompare(b.label, undefined, { sensitivity: "base", numeric: true }) || (a.label < b.label ? -1 : 1);
  return [...entries].sort(by === "newest" ? (a, b) => b.modified - a.modified || byName(a, b) : byName);
}

/** The entries whose path holds `filter` (any case). */
export function filterEntries(entries: readonly LibraryEntry[], filter: string): LibraryEntry[] {
  const f = filter.trim().toLowerCase();
  return f ? entries.filter((e) => e.label.toLowerCase().includes(f)) : [...entries];
}

/**
 * A short check of a UI-format workflow's graph (its nodes, links, groups and subgraphs as
 * JSON text): cyrb53, a 53-bit string hash. Not a security measure: it only tells whether the
 * graph is still the one the embedded document was saved with.
 */
export function graphCheck(ui: Record<string, unknown>): string {
  // a bigint (the export's reply) and its decimal text (the file read back) check alike
  const text = JSON.stringify([ui.nodes, ui.links, ui.groups ?? null, (ui.definitions as unknown) ?? null],
    (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The file to save: the UI-format workflow with our `document` in `extra.steerflow`, checked against its graph. */
export function withDocument(ui: Record<string, unknown>, document: unknown): Record<string, unknown> {
  const extra = isObject(ui.extra) ? ui.extra : {};
  return { ...ui, extra: { ...extra, [EMBED_KEY]: { check: graphCheck(ui), document } } };
}

/**
 * What to open from a library file: our document kept in it when the file's graph is still
 * the one it was saved with, else the file itself (ComfyUI's UI format, or anything else a
 * person put there; the canvas's loader reads or refuses it).
 */
export function openable(file: unknown): { obj: unknown; embedded: boolean } {
  if (isObject(file) && isObject(file.extra) && Array.isArray(file.nodes)) {
    const kept = file.extra[EMBED_KEY];
    if (isObject(kept) && typeof kept.check === "string" && isObject(kept.document) && kept.check === graphCheck(file)) {
      return { obj: kept.document, embedded: true };
    }
    if (kept !== undefined) {
      // changed elsewhere (ComfyUI's front end keeps unknown extra keys): the graph as it is now
      const rest = { ...file.extra };
      delete rest[EMBED_KEY];
      return { obj: { ...file, extra: rest }, embedded: false };
    }
  }
  return { obj: file, embedded: false };
}

/** A failed request as the library's messages tell it: the server's status and its word. */
export type Failure = { status?: number; message?: string; network?: boolean; type?: string };

/**
 * The message for a failed library action (`what`: "Cannot save x.json"). Every one says
 * what happened, and a failed save that the graph on the canvas is untouched.
 */
export function failureText(what: string, f: Failure, saving = false): string {
  const kept = saving ? " Your graph is still on the canvas (Export downloads it as a file)." : "";
  if (f.network) return `${what}: the server cannot be reached (${f.message || "network error"}).${kept}`;
  const why = f.message ? `: ${f.message.replace(/\.$/, "")}` : "";
  switch (f.status) {
    case 400:
      return `${what}: the server refused the name${why}.${kept}`;
    case 403:
      return `${what}: the server refused the path${why}.${kept}`;
    case 404:
      return `${what}: it is no longer in the library (deleted or renamed elsewhere). The list is refreshed.`;
    case 409:
      return `${what}${why}.${kept}`;
    case 413:
      return `${what}: the workflow is too large for the server${why}.${kept}`;
    case 507:
      return `${what}: the server's disk is full${why}.${kept}`;
    default:
      return `${what}: the server refused it (${f.status ?? "no status"})${why}.${kept}`;
  }
}

/** "3 min ago", "yesterday", a date: when a library entry last changed. */
export function whenText(modified: number, now = Date.now()): string {
  if (!modified) return "";
  const s = Math.max(0, Math.round((now - modified) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  const d = new Date(modified);
  return d.toISOString().slice(0, 10);
}
