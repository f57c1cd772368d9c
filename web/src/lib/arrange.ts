/**
 * Room for nodes that are taller on the canvas than the layout they came with.
 *
 * A ComfyUI workflow stores each node's size as ComfyUI drew it; ours are taller (a label
 * above each widget), so opened as stored they cover the nodes below them
 * (editor/useGraphStore.ts arranges an opened ComfyUI file with `arrangeOpened`). A node
 * also grows when it shows a live preview, images or text: `makeRoomBelow` moves the nodes
 * it now covers down. Nodes only move down (or, when opened, right past a neighbour they
 * overlap at the same height) and no further than needed, so the columns and the order of
 * the nodes in each column stay as they were.
 */

import { GROUP_PAD, type GroupBox, nodesInside } from "./groups";
import type { Rect } from "./layout";

/** The space left between a node and the one moved below it (px, flow coordinates). */
export const ROOM_GAP = 24;

type Point = { x: number; y: number };

function overlap(a: Rect, b: Rect): boolean {
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

/**
 * Move rectangles apart, from the top: each one (in the order of their tops, then lefts)
 * that overlaps an earlier one in `movers` moves below it (or, `sideways`, right past it
 * when that is the shorter way and it lies to its right), and becomes a mover itself.
 * `sideways` off, only a rectangle whose top lies below the mover's top is moved.
 * Returns the rectangles that moved, where they went.
 */
function separate(rects: ReadonlyMap<string, Rect>, movers: ReadonlySet<string>, opts: {
  gap: number; sideways: boolean; fixed?: ReadonlySet<string>;
}): Map<string, Rect> {
  const order = [...rects.keys()].sort((a, b) => {
    const ra = rects.get(a)!;
    const rb = rects.get(b)!;
    return ra.y - rb.y || ra.x - rb.x;
  });
  const now = new Map<string, Rect>();
  const active = new Set(movers);
  for (let i = 0; i < order.length; i++) {
    const id = order[i];
    const start = rects.get(id)!;
    if (opts.fixed?.has(id)) continue;
    let r = { ...start };
    // earlier rectangles are where they end up: move this one until none of them covers it
    for (let tries = 0; tries < 4 * order.length; tries++) {
      let hit: Rect | undefined;
      let hitStart: Rect | undefined;
      for (let j = 0; j < i && !hit; j++) {
        const other = order[j];
        if (!active.has(other)) continue;
        const o = now.get(other) ?? rects.get(other)!;
        if (!opts.sideways && rects.get(other)!.y >= start.y) continue; // beside it, not below
        if (overlap(o, r)) {
          hit = o;
          hitStart = rects.get(other)!;
        }
      }
      if (!hit || !hitStart) break;
      const down = hit.y + hit.height + opts.gap - r.y;
      const right = hit.x + hit.width + opts.gap - r.x;
      if (opts.sideways && start.x > hitStart.x && right < down) r = { ...r, x: r.x + right };
      else r = { ...r, y: r.y + down };
    }
    if (r.x !== start.x || r.y !== start.y) {
      now.set(id, r);
      active.add(id);
    }
  }
  return now;
}

/**
 * Make room below nodes that grew: a node (of `rects`, flow coordinates, the grown ones at
 * their new size) whose top lies below a grown node's top and which that node now covers
 * moves down to `gap` under it; a node it then covers moves too, and so on down the column.
 * `fixed` nodes (pinned, being dragged) stay. Returns the new top-left of each moved node.
 */
export function makeRoomBelow(rects: ReadonlyMap<string, Rect>, grown: Iterable<string>,
  fixed?: ReadonlySet<string>, gap = ROOM_GAP): Map<string, Point> {
  const moved = separate(rects, new Set(grown), { gap, sideways: false, fixed });
  return new Map([...moved].map(([id, r]) => [id, { x: r.x, y: r.y }]));
}

function contains(outer: Rect, inner: Rect): boolean {
  return outer.x <= inner.x && outer.y <= inner.y
    && outer.x + outer.width >= inner.x + inner.width && outer.y + outer.height >= inner.y + inner.height;
}

const rectOf = (g: GroupBox): Rect => ({ x: g.bounding[0], y: g.bounding[1], width: g.bounding[2], height: g.bounding[3] });
const area = (r: Rect) => r.width * r.height;

/**
 * An opened graph with no overlaps: `nodes` (flow coordinates, at their measured size) and
 * `groups` as the file placed them. Each group keeps the nodes (and groups) inside it: they
 * are moved apart within it, it grows to hold them, and then it moves as one block with the
 * nodes and groups beside it. Returns every node's top-left and the groups' new boxes.
 */
export function arrangeOpened(nodes: ReadonlyMap<string, Rect>, groups: readonly GroupBox[], gap = ROOM_GAP): {
  positions: Map<string, Point>; groups: GroupBox[];
} {
  const boxes = groups.map(rectOf);
  // each group's parent: the smallest other group around it (of two equal boxes, the first)
  const parentOf = boxes.map((box, i) => {
    let best = -1;
    boxes.forEach((other, j) => {
      if (j === i || !contains(other, box)) return;
      if (area(other) === area(box) && j > i) return; // the same box twice: the first holds the second
      if (best < 0 || area(other) < area(boxes[best])) best = j;
    });
    return best;
  });
  // each node's group: the smallest one it lies inside
  const groupOfNode = new Map<string, number>();
  boxes.forEach((box, i) => {
    for (const id of nodesInside(groups[i], nodes)) {
      const was = groupOfNode.get(id);
      if (was === undefined || area(box) < area(boxes[was])) groupOfNode.set(id, i);
    }
  });

  const rects = new Map(nodes);
  const kids = new Map<number, { nodes: string[]; groups: number[] }>();
  const kidsOf = (g: number) => {
    if (!kids.has(g)) kids.set(g, { nodes: [], groups: [] });
    return kids.get(g)!;
  };
  for (const id of nodes.keys()) kidsOf(groupOfNode.get(id) ?? -1).nodes.push(id);
  parentOf.forEach((p, i) => kidsOf(p).groups.push(i));

  const shift = (g: number, dx: number, dy: number) => {
    const b = boxes[g];
    boxes[g] = { ...b, x: b.x + dx, y: b.y + dy };
    for (const id of kidsOf(g).nodes) {
      const r = rects.get(id)!;
      rects.set(id, { ...r, x: r.x + dx, y: r.y + dy });
    }
    for (const c of kidsOf(g).groups) shift(c, dx, dy);
  };

  // inner groups first: a group's size is known before it is moved as a block
  const place = (g: number) => {
    const { nodes: ids, groups: inner } = kidsOf(g);
    for (const c of inner) place(c);
    const blocks = new Map<string, Rect>();
    for (const id of ids) blocks.set(`n${id}`, rects.get(id)!);
    for (const c of inner) blocks.set(`g${c}`, boxes[c]);
    for (const [key, r] of separate(blocks, new Set(blocks.keys()), { gap, sideways: true })) {
      const was = blocks.get(key)!;
      if (key[0] === "n") rects.set(key.slice(1), r);
      else shift(Number(key.slice(1)), r.x - was.x, r.y - was.y);
    }
    if (g < 0) return;
    // the group grows to hold what is inside it
    const b = boxes[g];
    const held = [...ids.map((id) => rects.get(id)!), ...inner.map((c) => boxes[c])];
    const right = Math.max(b.x + b.width, ...held.map((r) => r.x + r.width + GROUP_PAD));
    const bottom = Math.max(b.y + b.height, ...held.map((r) => r.y + r.height + GROUP_PAD));
    boxes[g] = { ...b, width: right - b.x, height: bottom - b.y };
  };
  place(-1);

  const positions = new Map<string, Point>();
  for (const [id, r] of rects) positions.set(id, { x: Math.round(r.x), y: Math.round(r.y) });
  return {
    positions,
    groups: groups.map((g, i) => {
      const r = boxes[i];
      return { ...g, bounding: [Math.round(r.x), Math.round(r.y), Math.round(r.width), Math.round(r.height)] };
    }),
  };
}
