/**
 * ComfyUI's Custom Combo (`CustomCombo`): a dropdown whose options the user types in the front
 * end. The server's schema has only `choice` (a combo without choices, not validated); ComfyUI's
 * front end (extensions/core/customWidgets.ts) adds the rest, and the canvas does the same:
 *
 * - option boxes `option1`, `option2`, ... in order, the last one always empty (typing into it
 *   opens a new one; emptying the one before an empty last box closes that last box);
 * - `choice`: one of the non-empty options (an edit that leaves it in none picks the first);
 * - `index`: a hidden widget, the position of the choice among the option boxes (empty boxes
 *   count), -1 when it is in none.
 *
 * The API prompt carries `choice`, `index` and every option box by name, as ComfyUI's front end
 * sends them; a ComfyUI UI workflow saves them by position, `widgets_values` =
 * `[choice, index, option1, ..., ""]` (older front ends: `[choice, option1, ...]`, no index).
 */

export const CUSTOM_COMBO = "CustomCombo";
/** The server's Custom Combo reads option1 ... option100. */
export const MAX_OPTIONS = 100;
const OPTION = /^option([1-9]\d*)$/;

/** Whether an input name is one the front end adds to a Custom Combo (not in its schema). */
export function isCustomComboExtra(name: string): boolean {
  if (name === "index") return true;
  const m = OPTION.exec(name);
  return !!m && Number(m[1]) <= MAX_OPTIONS;
}

function text(v: unknown): string {
  return typeof v === "string" ? v : v == null ? "" : String(v);
}

/**
 * The option boxes a node's values hold, in order (option1 first; a gap in the numbers is
 * closed up), with the empty last box the front end keeps (none when all 100 are filled).
 */
export function optionSlots(values: Readonly<Record<string, unknown>>): string[] {
  const numbered: [number, string][] = [];
  for (const [name, v] of Object.entries(values)) {
    const m = OPTION.exec(name);
    if (m && Number(m[1]) <= MAX_OPTIONS) numbered.push([Number(m[1]), text(v)]);
  }
  numbered.sort((a, b) => a[0] - b[0]);
  const slots = numbered.map(([, v]) => v);
  while (slots.length > 1 && slots[slots.length - 1] === "" && slots[slots.length - 2] === "") slots.pop();
  if ((slots.length === 0 || slots[slots.length - 1] !== "") && slots.length < MAX_OPTIONS) slots.push("");
  return slots;
}

/** The options the dropdown offers: the non-empty boxes, in order. */
export function comboChoices(slots: readonly string[]): string[] {
  return slots.filter((s) => s !== "");
}

/** ComfyUI's hidden `index`: the first box holding the choice (empty ones count), or -1. */
export function choiceIndex(slots: readonly string[], choice: string): number {
  return slots.indexOf(choice);
}

/**
 * A Custom Combo's values from its option boxes and choice: `choice`, `index`, then
 * `option1` ... in order. `keepChoice` (a file being opened) keeps a choice that is in no box,
 * as ComfyUI does while it configures a graph; an edit moves it to the first option.
 */
export function comboValues(slots: readonly string[], choice: unknown, keepChoice = false): Record<string, unknown> {
  const boxes = slots.slice(0, MAX_OPTIONS);
  const options = comboChoices(boxes);
  let chosen = text(choice);
  if (!keepChoice && !options.includes(chosen)) chosen = options[0] ?? "";
  const values: Record<string, unknown> = { choice: chosen, index: choiceIndex(boxes, chosen) };
  boxes.forEach((v, i) => {
    values[`option${i + 1}`] = v;
  });
  return values;
}

/** `values` with its choice, index and option boxes replaced by those of `combo` (other keys kept). */
export function replaceCombo(values: Readonly<Record<string, unknown>>, combo: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const kept = Object.fromEntries(Object.entries(values).filter(([k]) => k !== "choice" && !isCustomComboExtra(k)));
  return { ...kept, ...combo };
}

/** A new Custom Combo's values (ComfyUI's: no options, one empty box). */
export function newComboValues(): Record<string, unknown> {
  return comboValues([""], "");
}

/** The node's values, tidied as the widget shows them (a file's choice kept as it is). */
export function normalizeCombo(values: Readonly<Record<string, unknown>>): Record<string, unknown> {
  return comboValues(optionSlots(values), values.choice, true);
}

/**
 * Box `k` (0-based) set to `value`, as ComfyUI's boxes behave: text in the last box opens a new
 * empty one; emptying the box before an empty last box closes that last box.
 */
export function editOption(values: Readonly<Record<string, unknown>>, k: number, value: string): Record<string, unknown> {
  const slots = optionSlots(values);
  if (k < 0 || k >= slots.length) return comboValues(slots, values.choice);
  const wasChoice = slots[k] !== "" && slots[k] === text(values.choice);
  slots[k] = value;
  if (k === slots.length - 1 && value !== "" && slots.length < MAX_OPTIONS) slots.push("");
  else if (value === "" && k === slots.length - 2 && slots[slots.length - 1] === "") slots.pop();
  // renaming the chosen option keeps it chosen (ComfyUI would jump to the first option)
  const choice = wasChoice && value !== "" ? value : values.choice;
  return comboValues(slots, choice);
}

/** Box `k` taken out, the boxes after it moving up (the empty last box stays). */
export function removeOption(values: Readonly<Record<string, unknown>>, k: number): Record<string, unknown> {
  const slots = optionSlots(values);
  if (k >= 0 && k < slots.length && !(k === slots.length - 1 && slots[k] === "")) slots.splice(k, 1);
  return comboValues(optionSlots(Object.fromEntries(slots.map((v, i) => [`option${i + 1}`, v]))), values.choice);
}

/** The dropdown's choice set to `choice` (one of the options). */
export function chooseOption(values: Readonly<Record<string, unknown>>, choice: string): Record<string, unknown> {
  return comboValues(optionSlots(values), choice);
}
