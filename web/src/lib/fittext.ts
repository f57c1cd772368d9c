/**
 * A number field shows its whole value: a value too long for the field at its font size (a
 * 64-bit seed such as 18446744073709551615 beside its control_after_generate menu) is drawn in
 * a smaller font, so the node keeps its size and layout. Below `min` px the field scrolls as
 * any text box does, and its tooltip holds the whole value.
 */

/**
 * The font size (px) at which a text `widthAtBase` px wide at `base` px fits in `available`
 * px: `base` when it fits, else smaller, in half pixels, but never below `min`.
 */
export function fitFontSize(widthAtBase: number, available: number, base: number, min: number): number {
  if (!(widthAtBase > 0) || !(available > 0) || widthAtBase <= available) return base;
  const size = Math.floor(((base * available) / widthAtBase) * 2) / 2;
  return Math.max(Math.min(min, base), Math.min(base, size));
}

/** Whether text `widthAtBase` px wide at `base` px still overflows `available` px at `size` px. */
export function stillCut(widthAtBase: number, available: number, base: number, size: number): boolean {
  return available > 0 && (widthAtBase * size) / base > available + 0.5;
}
