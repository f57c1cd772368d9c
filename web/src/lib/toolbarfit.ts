/**
 * Which toolbar items leave the row when the window is too narrow for all of them
 * (editor/Toolbar.tsx). The toolbar stays one line: the least important items go
 * first, into a "More" menu (or, for the brand, simply out of sight), so every
 * control stays reachable. The widths are measured in the page, so this holds for
 * whatever font the browser draws with.
 */

export type ToolbarItem = {
  key: string;
  /** Outer width in px (margins included). */
  width: number;
  /** Lower ranks leave first; no rank: the item always stays in the row. */
  rank?: number;
  /** Whether the item moves into the "More" menu when it leaves (false: it just hides). */
  menu?: boolean;
};

export type ToolbarFit = {
  items: readonly ToolbarItem[];
  /** The row's inner width (the toolbar's width less its padding). */
  available: number;
  /** The flex gap between items. */
  gap: number;
  /** The "More" button's outer width, counted once an item has moved into the menu. */
  more: number;
};

/** The total width of a row showing `shown` items, with the "More" button when `withMore`. */
export function rowWidth(shown: readonly ToolbarItem[], gap: number, more: number, withMore: boolean): number {
  const n = shown.length + (withMore ? 1 : 0);
  const widths = shown.reduce((sum, it) => sum + it.width, 0) + (withMore ? more : 0);
  return widths + gap * Math.max(0, n - 1);
}

/**
 * The keys of the items to take out of the row, lowest rank first, until the rest
 * fits in `available` (or nothing that may leave is left: then the row wraps).
 * Items of equal rank leave in the reverse of their order in the row.
 */
export function collapseToFit({ items, available, gap, more }: ToolbarFit): string[] {
  const order = items
    .map((it, i) => ({ it, i }))
    .filter(({ it }) => it.rank !== undefined)
    .sort((a, b) => (a.it.rank! - b.it.rank!) || (b.i - a.i))
    .map(({ it }) => it);
  const out = new Set<string>();
  const fits = () => {
    const shown = items.filter((it) => !out.has(it.key));
    const withMore = items.some((it) => out.has(it.key) && it.menu);
    return rowWidth(shown, gap, more, withMore) <= available + 0.5;
  };
  for (const it of order) {
    if (fits()) break;
    out.add(it.key);
  }
  return items.filter((it) => out.has(it.key)).map((it) => it.key);
}
