/**
 * Where the view lands when a graph opens, and when the canvas drops detail.
 *
 * As ComfyUI does on load, an opened graph is fitted to the view: a small one is zoomed in to
 * fill it (up to FIT_MAX_ZOOM), a larger one out. Text stays readable: a graph is fitted at
 * zoom READABLE_ZOOM or more; one that does not fit there is shown from its top-left corner
 * (where its loaders are) and the user scrolls for the rest. Only a truly large graph may be
 * fitted further out, and only such a graph switches to low detail when zoomed out.
 */

export type Rect = { x: number; y: number; width: number; height: number };
export type Viewport = { x: number; y: number; zoom: number };

/** The smallest zoom an opened graph gets: 13 px text stays above 10 px on screen. */
export const READABLE_ZOOM = 0.8;
/**
 * The largest zoom an opened graph is fitted at: a small graph fills the view rather than sit
 * at zoom 1 in the middle of a large window, its nodes at most this much larger.
 */
export const FIT_MAX_ZOOM = 1.5;
/** The canvas's zoom range (React Flow's minZoom / maxZoom). */
export const CANVAS_MIN_ZOOM = 0.1;
export const CANVAS_MAX_ZOOM = 4;
/**
 * The margin a fit leaves around the graph, as a share of the pane (at least PADDING): the
 * graph clears the minimap and the zoom buttons in the corners (ComfyUI leaves 12.5%).
 */
export const FIT_MARGIN = 0.08;
/** Graphs with more nodes than this may be fitted below READABLE_ZOOM, down to OVERVIEW_ZOOM. */
export const LARGE_GRAPH = 40;
export const OVERVIEW_ZOOM = 0.4;
/**
 * An example or the first visit's graph opens whole, so its Save Image is in view, down to
 * this zoom (a small window: at 1024x768 most examples need less than OVERVIEW_ZOOM).
 */
export const WHOLE_VIEW_ZOOM = 0.2;
/** Low detail (no widgets) needs both: this many nodes, and a zoom under LOD_ZOOM. */
export const LOD_NODES = 120;
export const LOD_ZOOM = 0.5;
const PADDING = 40;
/** A node's size before it is measured (the CSS width; a typical height). */
export const NODE_WIDTH = 260;
export const NODE_HEIGHT = 200;

/** Heights (px) of a node's parts as the CSS draws them, for its size before it is measured. */
const HEADER_HEIGHT = 36;
const SOCKET_ROW = 18;
/** A widget's row: its label and a one-line field. */
const WIDGET_ROW = 38;
/** What a multiline text widget (a textarea, 3 rows) adds to a one-line field. */
const TEXTAREA_EXTRA = 37;
/** What an image-upload widget's preview adds (the CSS's max-height, and its margin). */
const UPLOAD_PREVIEW = 184;

/** What estimateNodeHeight needs of a node's definition (lib/schema.ts NodeDef). */
export type NodeShape = {
  inputs: readonly {
    widget: boolean; type: string; options: { multiline?: boolean; upload?: string }; choices?: string[]; draw?: string;
  }[];
  outputs: readonly unknown[];
};

/** What ComfyUI's front-end widgets add to a field (canvas/widgets/): labels, a box, a camera. */
const FRONTEND_WIDGET_EXTRA: Record<string, number> = {
  BOUNDING_BOX: 16, WEBCAM: 60, IMAGECOMPARE: 0, customCombo: 26,
};

/**
 * A new node's height before it is measured: the title, a row per socket, a label and a field
 * per widget; a multiline text widget is a textarea, and an image upload shows its image.
 */
export function estimateNodeHeight(def: NodeShape | undefined): number {
  if (!def) return 80;
  let height = HEADER_HEIGHT + SOCKET_ROW * def.outputs.length;
  for (const input of def.inputs) {
    if (!input.widget) {
      height += SOCKET_ROW;
      continue;
    }
    height += WIDGET_ROW;
    if (input.type === "STRING" && input.options.multiline) height += TEXTAREA_EXTRA;
    if (input.options.upload === "image" && input.choices?.length) height += UPLOAD_PREVIEW;
    height += FRONTEND_WIDGET_EXTRA[input.draw ?? input.type] ?? 0;
  }
  return height;
}

/** What resultRoom needs of a node's definition (lib/schema.ts NodeDef). */
export type ResultShape = {
  outputNode: boolean;
  inputs: readonly { widget: boolean; type: string }[];
  outputs: readonly { type: string }[];
};

/** The CSS's side margins of a preview box or an image grid (8 px each), less its 6 px top margin. */
const RESULT_INSET = 10;

/**
 * How much taller a node `width` wide grows when it runs, for what it does not show yet: a
 * sampler's live preview (a square box of its width) and an output node's image (one 64 px
 * model's image fills the width). Free space for a new node keeps clear of that room, else
 * the first run's preview pushes the new node down, out of view (lib/arrange.ts).
 */
export function resultRoom(def: ResultShape | undefined, width: number,
  shown: { preview: boolean; images: boolean }): number {
  if (!def) return 0;
  const takes = (type: string) => def.inputs.some((i) => !i.widget && i.type === type);
  const sampler = takes("MODEL") && def.outputs.some((o) => o.type === "LATENT");
  const showsImages = def.outputNode && takes("IMAGE");
  if ((sampler && !shown.preview) || (showsImages && !shown.images)) return Math.max(0, width - RESULT_INSET);
  return 0;
}

/** The rectangle around `rects` (empty: a zero rectangle at the origin). */
export function boundsOf(rects: readonly Rect[]): Rect {
  if (!rects.length) return { x: 0, y: 0, width: 0, height: 0 };
  const x = Math.min(...rects.map((r) => r.x));
  const y = Math.min(...rects.map((r) => r.y));
  const right = Math.max(...rects.map((r) => r.x + r.width));
  const bottom = Math.max(...rects.map((r) => r.y + r.height));
  return { x, y, width: right - x, height: bottom - y };
}

/** Options for React Flow's fitView that honour the readable zoom. */
export function fitViewOptions(nodeCount: number): { padding: number; maxZoom: number; minZoom: number } {
  return { padding: 0.08, maxZoom: FIT_MAX_ZOOM, minZoom: nodeCount > LARGE_GRAPH ? OVERVIEW_ZOOM : READABLE_ZOOM };
}

/**
 * The viewport that shows `bounds` (flow coordinates) in a `width`×`height` pane:
 * the whole graph, centred, filling the pane but its margins (FIT_MARGIN), when it fits at
 * a readable zoom (at most FIT_MAX_ZOOM), else the top-left part at the readable zoom.
 */
export function fitViewport(bounds: Rect, width: number, height: number, nodeCount: number): Viewport {
  const { minZoom: min, maxZoom: max } = fitViewOptions(nodeCount);
  const mx = Math.max(PADDING, FIT_MARGIN * width);
  const my = Math.max(PADDING, FIT_MARGIN * height);
  const fit = Math.min((width - 2 * mx) / Math.max(1, bounds.width), (height - 2 * my) / Math.max(1, bounds.height));
  const zoom = Math.max(min, Math.min(max, fit));
  const w = bounds.width * zoom;
  const h = bounds.height * zoom;
  // centre along an axis that fits; otherwise start at the graph's left / top edge
  const x = w <= width - 2 * PADDING ? (width - w) / 2 - bounds.x * zoom : PADDING - bounds.x * zoom;
  const y = h <= height - 2 * PADDING ? (height - h) / 2 - bounds.y * zoom : PADDING - bounds.y * zoom;
  return { x, y, zoom };
}

/**
 * Whether a viewport an opened file brings keeps the promise `fitViewport` keeps: text as
 * large as a fit would allow (READABLE_ZOOM, or OVERVIEW_ZOOM for a large graph), with the
 * whole graph in view (a fit shows no less of it). ComfyUI saves whatever view its user last
 * had, often zoomed far out or into one corner, for a larger window and its smaller nodes.
 */
export function keepsReadableView(vp: Viewport, bounds: Rect, width: number, height: number, nodeCount: number): boolean {
  if (!(vp.zoom >= fitViewOptions(nodeCount).minZoom - 1e-6)) return false;
  const left = bounds.x * vp.zoom + vp.x;
  const top = bounds.y * vp.zoom + vp.y;
  return left >= 0 && top >= 0 && left + bounds.width * vp.zoom <= width && top + bounds.height * vp.zoom <= height;
}

/** Whether viewport `vp` shows any part of any of `rects` (flow coordinates) in a `width`×`height` pane. */
export function showsAny(vp: Viewport, rects: readonly Rect[], width: number, height: number): boolean {
  return rects.some((r) => {
    const left = r.x * vp.zoom + vp.x;
    const top = r.y * vp.zoom + vp.y;
    return left < width && top < height && left + r.width * vp.zoom > 0 && top + r.height * vp.zoom > 0;
  });
}

/**
 * Whether viewport `vp` shows all of every one of `rects` (within `slack` px) in a
 * `width`×`height` pane: the first view of the default graph must (no node cut off by the
 * side panel or the window's bottom edge), where a document's own view need only show some.
 */
export function showsAll(vp: Viewport, rects: readonly Rect[], width: number, height: number, slack = 1): boolean {
  return rects.every((r) => {
    const left = r.x * vp.zoom + vp.x;
    const top = r.y * vp.zoom + vp.y;
    return left >= -slack && top >= -slack && left + r.width * vp.zoom <= width + slack && top + r.height * vp.zoom <= height + slack;
  });
}

/** Whether the canvas should drop widgets: only a large graph, zoomed far out. */
export function lowDetail(zoom: number, nodeCount: number): boolean {
  return nodeCount >= LOD_NODES && zoom < LOD_ZOOM;
}

/** Rectangles that overlap (by more than `slack` px each way): pairs of ids. */
export function overlaps(rects: Map<string, Rect>, slack = 0): [string, string][] {
  const list = [...rects.entries()];
  const out: [string, string][] = [];
  for (let i = 0; i < list.length; i++) {
    for (let j = i + 1; j < list.length; j++) {
      const [a, ra] = list[i];
      const [b, rb] = list[j];
      if (ra.x + ra.width - slack > rb.x && rb.x + rb.width - slack > ra.x
        && ra.y + ra.height - slack > rb.y && rb.y + rb.height - slack > ra.y) out.push([a, b]);
    }
  }
  return out;
}

type Point = { x: number; y: number };

function hits(a: Rect, b: Rect, gap: number): boolean {
  return a.x < b.x + b.width + gap && b.x < a.x + a.width + gap && a.y < b.y + b.height + gap && b.y < a.y + a.height + gap;
}

/**
 * How far (flow units) a placed node keeps from the view's edges: its sockets stick out ~5 px
 * past its sides, and one on the edge sat under the side panel, where no link could start.
 */
export const VIEW_MARGIN = 16;

function inside(a: Rect, view: Rect, margin = VIEW_MARGIN): boolean {
  return a.x >= view.x + margin && a.y >= view.y + margin
    && a.x + a.width <= view.x + view.width - margin && a.y + a.height <= view.y + view.height - margin;
}

/**
 * Where a new node of `size` goes (its top-left): the free spot nearest `want` that keeps
 * `gap` from every rectangle of `taken`, inside `view` (the visible part of the canvas,
 * flow coordinates), VIEW_MARGIN from its edges, when one is free there, else the nearest
 * free spot outside it.
 */
export function freeSpot(taken: readonly Rect[], want: Point, size: { width: number; height: number },
  view?: Rect, gap = 24): Point {
  const step = 20;
  const rings = 60;
  let outside: Point | null = null;
  for (let r = 0; r <= rings; r++) {
    // the square ring r steps out, nearest offsets first
    const ring: Point[] = [];
    for (let i = -r; i <= r; i++) {
      for (let j = -r; j <= r; j++) if (Math.max(Math.abs(i), Math.abs(j)) === r) ring.push({ x: i * step, y: j * step });
    }
    ring.sort((a, b) => a.x * a.x + a.y * a.y - (b.x * b.x + b.y * b.y));
    for (const d of ring) {
      const spot = { x: Math.round(want.x + d.x), y: Math.round(want.y + d.y) };
      const box = { ...spot, ...size };
      if (taken.some((t) => hits(box, t, gap))) continue;
      if (!view || inside(box, view)) return spot;
      outside ??= spot;
    }
  }
  return outside ?? want;
}

/**
 * How far (flow units) the view must move so `box` lies inside it, VIEW_MARGIN from its
 * edges ({0, 0}: it does already). A node placed outside a full view (freeSpot) is shown
 * this way rather than left under the toolbar or the side panel; a box bigger than the view
 * shows its top-left corner, where its title and first sockets are.
 */
export function revealShift(box: Rect, view: Rect, margin = VIEW_MARGIN): Point {
  const axis = (start: number, length: number, from: number, span: number): number => {
    if (start < from + margin || length > span - 2 * margin) return start - (from + margin);
    return Math.max(0, start + length - (from + span - margin));
  };
  return { x: axis(box.x, box.width, view.x, view.width), y: axis(box.y, box.height, view.y, view.height) };
}

/**
 * Where pasted or cloned nodes go, as one block keeping their arrangement: the offset that
 * moves the block `clip` (their boxes, as copied) to the free spot nearest `want` (the
 * pointer, or beside the cloned node) for its top-left corner, keeping `freeSpot`'s gap from
 * every node of `taken`, as a node added by double-click is placed.
 */
export function pasteOffset(clip: readonly Rect[], taken: readonly Rect[], want: Point, view?: Rect): Point {
  const b = boundsOf(clip);
  const spot = freeSpot(taken, want, { width: b.width, height: b.height }, view);
  return { x: spot.x - b.x, y: spot.y - b.y };
}

/** The dot grid's spacing on screen is never under this (px): closer dots blur into a grey moiré. */
export const MIN_DOT_CELL = 12;

/**
 * The dot grid at `zoom`: the cell on screen (px) and how many times the grid was thinned.
 * Zoomed out, every 2nd, 4th, 8th… dot is kept (the kept ones stay on the grid), so the
 * cell stays at least MIN_DOT_CELL px; thinned dots are drawn fainter.
 */
export function dotGridCell(gap: number, zoom: number): { cell: number; thinned: number } {
  let cell = gap * zoom;
  let thinned = 0;
  while (cell > 0 && cell < MIN_DOT_CELL && thinned < 10) {
    cell *= 2;
    thinned++;
  }
  return { cell, thinned };
}
