/**
 * ComfyUI's `COLOR` widget (Color Picker's `color`): a colour picker whose value is `#rrggbb`.
 * Steerflow's server declares those inputs as STRING with a `#RRGGBB` default (what its
 * validation admits as a constant), so the canvas draws a picker for either: a COLOR input, or
 * a STRING input whose default is a hex colour. Beside the picker the text stays editable, for
 * `#RRGGBBAA` (the browser's picker has no alpha; picking a colour keeps the typed alpha).
 */

import type { InputDef } from "./schema";

const HEX = /^#([0-9a-fA-F]{6})([0-9a-fA-F]{2})?$/;

/** Whether an input is drawn as a colour picker. */
export function isColorInput(input: Pick<InputDef, "type" | "options">): boolean {
  if (input.type === "COLOR") return true;
  const d = input.options.default;
  return input.type === "STRING" && typeof d === "string" && HEX.test(d) && !input.options.multiline;
}

/** The picker's value for a stored one: `#rrggbb` (lower case), black when it is not a colour. */
export function pickerValue(value: unknown): string {
  const m = typeof value === "string" ? HEX.exec(value.trim()) : null;
  return m ? `#${m[1].toLowerCase()}` : "#000000";
}

/** The value after picking `picked`: `#rrggbb`, with the previous value's alpha digits kept. */
export function fromPicker(picked: string, previous: unknown): string {
  const m = HEX.exec(picked.trim());
  if (!m) return typeof previous === "string" ? previous : "#000000";
  const old = typeof previous === "string" ? HEX.exec(previous.trim()) : null;
  return `#${m[1].toLowerCase()}${old?.[2] ?? ""}`;
}

/**
 * What is wrong with a colour value, or null: `#RRGGBB` or `#RRGGBBAA` (Crop Image to Mask also
 * takes them without the `#`, Color Picker not: the server says so on the node).
 */
export function colorIssue(value: unknown): string | null {
  if (typeof value === "string" && (HEX.test(value) || HEX.test(`#${value}`))) return null;
  return `“${String(value ?? "")}” is not a colour: write #RRGGBB or #RRGGBBAA`;
}
