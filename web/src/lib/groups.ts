/**
 * Groups: titled boxes behind nodes (ComfyUI's `{title, bounding: [x, y, w, h], color}`,
 * saved as-is in our documents' `layout.groups`). A group holds the nodes that lie
 * inside its box; moving it moves them.
 */

import type { Rect } from "./layout";

export type GroupBox = { title: string; bounding: [number, number, number, number]; color?: string; font_size?: number };

/** Room above the nodes for the group's title bar, and around them. */
export const GROUP_TITLE = 34;
export const GROUP_PAD = 16;
export const GROUP_COLOR = "#3f789e"; // ComfyUI's default group colour

/** The valid groups of a document (anything else is dropped). */
export function parseGroups(raw: unknown): GroupBox[] {
  if (!Array.isArray(raw)) return [];
  const out: GroupBox[] = [];
  for (const g of raw) {
    if (!g || typeof g !== "object") continue;
    const o = g as Record<string, unknown>;
    const b = o.bounding;
    if (!Array.isArray(b) || b.length < 4 || !b.slice(0, 4).every((v) => typeof v === "number" && Number.isFinite(v))) continue;
    const box: GroupBox = {
      title: typeof o.title === "string" ? o.title : "Group",
      bounding: [b[0], b[1], Math.max(40, b[2]), Math.max(40, b[3])],
    };
    if (typeof o.color === "string" && /^#[0-9a-fA-F]{3,8}$/.test(o.color)) box.color = o.color;
    if (typeof o.font_size === "number" && o.font_size > 0 && o.font_size < 200) box.font_size = o.font_size;
    out.push(box);
  }
  return out;
}

/** A group around `rects` (flow coordinates), with room for its title. */
export function groupAround(rects: readonly Rect[], title = "Group"): GroupBox {
  const x = Math.min(...rects.map((r) => r.x)) - GROUP_PAD;
  const y = Math.min(...rects.map((r) => r.y)) - GROUP_PAD - GROUP_TITLE;
  const right = Math.max(...rects.map((r) => r.x + r.width)) + GROUP_PAD;
  const bottom = Math.max(...rects.map((r) => r.y + r.height)) + GROUP_PAD;
  return { title, bounding: [Math.round(x), Math.round(y), Math.round(right - x), Math.round(bottom - y)] };
}

/** The ids of the rects that lie inside `group` (their top-left corner and most of them). */
export function nodesInside(group: GroupBox, rects: ReadonlyMap<string, Rect>): string[] {
  const [gx, gy, gw, gh] = group.bounding;
  const out: string[] = [];
  for (const [id, r] of rects) {
    const cx = r.x + Math.min(r.width, 60) / 2;
    const cy = r.y + Math.min(r.height, 40) / 2;
    if (r.x >= gx && cx <= gx + gw && r.y >= gy && cy <= gy + gh) out.push(id);
  }
  return out;
}
