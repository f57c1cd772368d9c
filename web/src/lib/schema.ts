/**
 * Node schemas: the server's /object_info entries (ComfyUI's shape) turned into
 * the definitions the canvas renders — which inputs are widgets, which are
 * sockets, and the options of each widget.
 */

import { DEFAULT_BOX } from "./boundingbox";
import { isColorInput } from "./color";
import { CUSTOM_COMBO, newComboValues } from "./customcombo";
import { clampBig, fromBigInt, toBigInt } from "./exactint";

export type InputOptions = {
  default?: unknown;
  min?: number;
  max?: number;
  step?: number;
  display?: string;
  multiline?: boolean;
  /**
   * A prompt box ComfyUI's front end resolves when it queues: `{a|b}` choices and `//`
   * comments (lib/dynamicprompts.ts). The node keeps the text as typed.
   */
  dynamicPrompts?: boolean;
  tooltip?: string;
  upload?: string;
  control_after_generate?: boolean;
  forceInput?: boolean;
  [key: string]: unknown;
};

/** ComfyUI's DynamicCombo (`COMFY_DYNAMICCOMBO_V3`): a combo whose options bring inputs. */
export const DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3";
/** ComfyUI's MatchType (`COMFY_MATCHTYPE_V3`): an output typed as what is linked to an input. */
export const MATCH_TYPE = "COMFY_MATCHTYPE_V3";
/** ComfyUI's Autogrow (`COMFY_AUTOGROW_V3`): a list of like inputs that grows as it is linked. */
export const AUTOGROW = "COMFY_AUTOGROW_V3";
/** ComfyUI's limit on an Autogrow's slots. */
const MAX_AUTOGROW_SLOTS = 100;

/** One input of an /object_info entry: `[TYPE, opts]` or `[[choices], opts]`. */
export type RawInput = unknown[];

export type RawNodeSchema = {
  name?: string;
  display_name?: string;
  description?: string;
  category?: string;
  output_node?: boolean;
  deprecated?: boolean;
  /** Other words the search finds the node by (ComfyUI's V3 schema). */
  search_aliases?: unknown;
  input?: { required?: Record<string, RawInput>; optional?: Record<string, RawInput> };
  input_order?: { required?: string[]; optional?: string[] };
  output?: (string | unknown[])[];
  output_name?: string[];
  output_tooltips?: string[];
  /** Per output, the MatchType template it follows (null: a plain output). */
  output_matchtypes?: (string | null)[] | null;
};

export type ObjectInfo = Record<string, RawNodeSchema>;

export type WidgetType = "INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO" | FrontEndWidgetType;
/**
 * Widgets only ComfyUI's front end draws (the server declares them in /object_info under
 * their own type): a crop box, a colour picker, a camera, a before/after slider.
 */
export type FrontEndWidgetType = "BOUNDING_BOX" | "COLOR" | "WEBCAM" | "IMAGECOMPARE";
export const FRONTEND_WIDGET_TYPES: ReadonlySet<string> = new Set(["BOUNDING_BOX", "COLOR", "WEBCAM", "IMAGECOMPARE"]);
export const WIDGET_TYPES: ReadonlySet<string> = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", ...FRONTEND_WIDGET_TYPES]);

export type InputDef = {
  name: string;
  /** Socket type: MODEL, LATENT, ... or INT/FLOAT/STRING/BOOLEAN/COMBO for widgets. */
  type: string;
  /** True when the input holds a constant edited in the node (it can still be linked). */
  widget: boolean;
  required: boolean;
  options: InputOptions;
  choices?: string[];
  /** An INT's bounds beyond 2^53, exactly (`options.min`/`max` hold the nearest double). */
  exactMin?: bigint;
  exactMax?: bigint;
  /** What the node shows (a DynamicCombo's input `resize_type.width` shows `width`). */
  label?: string;
  /** An input a DynamicCombo brings: the combo's name and the options that bring it. */
  parent?: { name: string; keys: string[] };
  /** A MatchType input's template id. */
  match?: string;
  /** A slot of an Autogrow group (`images.image0` of `images`): the group's name. */
  autogrow?: string;
  /** A DynamicCombo: per option, the names of the inputs it brings, in its order. */
  dynamic?: Record<string, string[]>;
  /**
   * How a widget is drawn when not by its type: a colour picker (a STRING with a `#RRGGBB`
   * default, lib/color.ts), or Custom Combo's options editor (lib/customcombo.ts).
   */
  draw?: "color" | "customCombo";
};

export type OutputDef = { type: string; name: string; tooltip?: string };

export type NodeDef = {
  type: string;
  displayName: string;
  description: string;
  category: string;
  outputNode: boolean;
  deprecated: boolean;
  /** Other words the palette finds it by ("SAG", "attend and excite"). */
  searchAliases?: string[];
  inputs: InputDef[];
  outputs: OutputDef[];
};

export type Defs = Map<string, NodeDef>;

/** A node's name as the canvas shows it: its title, else its type's display name. */
export function nodeTitle(node: { title?: string; type: string }, defs: Defs): string {
  return node.title ?? defs.get(node.type)?.displayName ?? node.type;
}

/** The accessible name of a node's "?" button: it names the node ("Help: Load Checkpoint"), not only "help". */
export function helpButtonLabel(node: { title?: string; type: string }, defs: Defs): string {
  return `Help: ${nodeTitle(node, defs)}`;
}

/**
 * Options with no bigint left (api.ts parses /object_info with 64-bit integers exact):
 * `min`/`max` become the nearest number, kept exactly in `exact`; a default stays exact
 * as the canvas stores big integers (lib/exactint.ts).
 */
function plainOptions(raw: Record<string, unknown>, exact: { min?: bigint; max?: bigint }): InputOptions {
  const options: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (typeof v !== "bigint") options[k] = v;
    else if (k === "default") options[k] = fromBigInt(v);
    else {
      options[k] = Number(v);
      if (k === "min" || k === "max") exact[k] = v;
    }
  }
  return options as InputOptions;
}

function parseInput(name: string, raw: RawInput | undefined, required: boolean): InputDef | null {
  if (!Array.isArray(raw) || raw.length === 0) return null;
  const head = raw[0];
  const exact: { min?: bigint; max?: bigint } = {};
  const options = plainOptions((raw[1] && typeof raw[1] === "object" ? raw[1] : {}) as Record<string, unknown>, exact);
  if (Array.isArray(head)) {
    const choices = head.map((c) => String(c));
    return { name, type: "COMBO", widget: !options.forceInput, required, options, choices };
  }
  const type = String(head);
  if (type === MATCH_TYPE) {
    // Any of the template's types; ComfyUI's front end narrows it as it is linked.
    const template = (options.template ?? {}) as { template_id?: unknown; allowed_types?: unknown };
    const allowed = typeof template.allowed_types === "string" ? template.allowed_types : "*";
    const def: InputDef = { name, type: allowed, widget: false, required, options };
    if (typeof template.template_id === "string") def.match = template.template_id;
    return def;
  }
  // Newer ComfyUI writes combos as ["COMBO", {options: [...]}].
  if (type === "COMBO") {
    const list = Array.isArray(options.options) ? (options.options as unknown[]).map(String) : [];
    return { name, type, widget: !options.forceInput, required, options, choices: list };
  }
  const widget = WIDGET_TYPES.has(type) && !options.forceInput;
  const def: InputDef = { name, type, widget, required, options };
  if (widget && isColorInput(def)) def.draw = "color";
  if (exact.min !== undefined) def.exactMin = exact.min;
  if (exact.max !== undefined) def.exactMax = exact.max;
  return def;
}

/**
 * A DynamicCombo (`["COMFY_DYNAMICCOMBO_V3", {options: [{key, inputs}]}]`): the combo, then
 * every input its options bring, named `combo.sub` as in ComfyUI's API prompt (one input for
 * a name two options share), each knowing which options bring it.
 */
function parseDynamicCombo(name: string, raw: RawInput, required: boolean): InputDef[] {
  const exact = {};
  const options = plainOptions((raw[1] && typeof raw[1] === "object" ? raw[1] : {}) as Record<string, unknown>, exact);
  const list = Array.isArray(options.options) ? (options.options as unknown[]) : [];
  const keys: string[] = [];
  const dynamic: Record<string, string[]> = {};
  const brought = new Map<string, InputDef>();
  for (const option of list) {
    if (!option || typeof option !== "object") continue;
    const { key, inputs } = option as { key?: unknown; inputs?: RawNodeSchema["input"] };
    if (typeof key !== "string") continue;
    keys.push(key);
    dynamic[key] = [];
    for (const [section, isRequired] of [["required", true], ["optional", false]] as const) {
      for (const [sub, spec] of Object.entries(inputs?.[section] ?? {})) {
        const full = `${name}.${sub}`;
        const known = brought.get(full);
        const def = known ? null : parseInput(full, spec, isRequired);
        if (known) known.parent!.keys.push(key);
        else if (def) brought.set(full, { ...def, label: sub, parent: { name, keys: [key] } });
        else continue;
        dynamic[key].push(full);
      }
    }
  }
  const { options: _, ...rest } = options;
  const combo: InputDef = { name, type: "COMBO", widget: true, required, options: rest, choices: keys, dynamic };
  return [combo, ...brought.values()];
}

/**
 * An Autogrow (`["COMFY_AUTOGROW_V3", {template: {input: {required: {image: [...]}}, prefix:
 * "image", min: 2, max: 50}}]`, or `names: [...]` in place of prefix and max): its slots,
 * named `group.slot` as in ComfyUI's API prompt (`images.image0`), each an input of the
 * template's type; the first `min` are required unless the template input is optional.
 */
function parseAutogrow(name: string, raw: RawInput, required: boolean): InputDef[] {
  const body = (raw[1] && typeof raw[1] === "object" ? raw[1] : {}) as { template?: unknown };
  const template = (body.template && typeof body.template === "object" ? body.template : {}) as {
    input?: RawNodeSchema["input"]; names?: unknown; prefix?: unknown; min?: unknown; max?: unknown;
  };
  const count = (v: unknown, fallback: number) =>
    typeof v === "number" && Number.isFinite(v) ? Math.max(0, Math.min(MAX_AUTOGROW_SLOTS, Math.floor(v))) : fallback;
  const slots = Array.isArray(template.names)
    ? template.names.slice(0, MAX_AUTOGROW_SLOTS).map(String)
    : Array.from({ length: count(template.max, 10) }, (_, k) => `${typeof template.prefix === "string" ? template.prefix : ""}${k}`);
  const min = count(template.min, 1);
  const entries = [
    ...Object.entries(template.input?.required ?? {}).map(([n, spec]) => [n, spec, true] as const),
    ...Object.entries(template.input?.optional ?? {}).map(([n, spec]) => [n, spec, false] as const),
  ];
  if (entries.length === 0) return [];
  const [, spec, templateRequired] = entries[0]; // ComfyUI's backend declares one template input
  const out: InputDef[] = [];
  slots.forEach((slot, k) => {
    const def = parseInput(`${name}.${slot}`, spec, required && templateRequired && k < min);
    if (def) out.push({ ...def, widget: false, label: slot, autogrow: name });
  });
  return out;
}

/** The inputs without those of DynamicCombo options not chosen, the chosen one's after its combo, in its order. */
function chosenInputs(inputs: readonly InputDef[], values: Readonly<Record<string, unknown>>): InputDef[] {
  const byName = new Map(inputs.map((i) => [i.name, i]));
  const out: InputDef[] = [];
  for (const input of inputs) {
    if (input.parent) continue;
    out.push(input);
    if (!input.dynamic) continue;
    const chosen = values[input.name] ?? defaultValue(input);
    for (const name of typeof chosen === "string" ? input.dynamic[chosen] ?? [] : []) {
      const sub = byName.get(name);
      if (sub) out.push(sub);
    }
  }
  return out;
}

/** Whether an input counts given the node's values: not one a DynamicCombo option other than the chosen brings. */
export function isActive(input: InputDef, values: Readonly<Record<string, unknown>>, inputs?: readonly InputDef[]): boolean {
  if (!input.parent) return true;
  let chosen = values[input.parent.name];
  if (chosen === undefined && inputs) {
    const combo = inputs.find((i) => i.name === input.parent!.name);
    if (combo) chosen = defaultValue(combo);
  }
  return typeof chosen === "string" && input.parent.keys.includes(chosen);
}

/**
 * The inputs a node shows: all, except that of each Autogrow group only the required ones
 * and those up to one past the last linked (a free socket to link the next item), and of a
 * DynamicCombo's only those the chosen option brings (given `values`).
 */
export function visibleInputs(inputs: readonly InputDef[], linked: ReadonlySet<string>,
  values?: Readonly<Record<string, unknown>>): InputDef[] {
  if (values) inputs = chosenInputs(inputs, values);
  const lastLinked = new Map<string, number>();
  const position = new Map<string, number>();
  const counts = new Map<string, number>();
  for (const input of inputs) {
    const group = input.autogrow;
    if (group === undefined) continue;
    const k = counts.get(group) ?? 0;
    counts.set(group, k + 1);
    position.set(input.name, k);
    if (linked.has(input.name)) lastLinked.set(group, k);
  }
  return inputs.filter((input) => {
    const group = input.autogrow;
    if (group === undefined || input.required) return true;
    return (position.get(input.name) ?? 0) <= (lastLinked.get(group) ?? -1) + 1;
  });
}

/** One /object_info entry → a node definition, inputs in the schema's order. */
export function parseNodeSchema(type: string, raw: RawNodeSchema): NodeDef {
  const inputs: InputDef[] = [];
  for (const [section, required] of [["required", true], ["optional", false]] as const) {
    const group = raw.input?.[section] ?? {};
    const order = raw.input_order?.[section] ?? Object.keys(group);
    const names = [...order, ...Object.keys(group).filter((n) => !order.includes(n))];
    for (const name of names) {
      const raw = group[name];
      if (Array.isArray(raw) && raw[0] === DYNAMIC_COMBO) inputs.push(...parseDynamicCombo(name, raw, required));
      else if (Array.isArray(raw) && raw[0] === AUTOGROW) inputs.push(...parseAutogrow(name, raw, required));
      else {
        const def = parseInput(name, raw, required);
        if (def) inputs.push(def);
      }
    }
  }
  if (type === CUSTOM_COMBO) {
    // ComfyUI's front end adds the option boxes and the hidden index (lib/customcombo.ts)
    const choice = inputs.find((i) => i.name === "choice" && i.widget);
    if (choice) choice.draw = "customCombo";
  }
  const outTypes = raw.output ?? [];
  const outputs: OutputDef[] = outTypes.map((t, i) => {
    const template = raw.output_matchtypes?.[i];
    const matched = template ? inputs.filter((input) => input.match === template).map((input) => input.type) : [];
    const type = matched.length ? [...new Set(matched.join(",").split(","))].join(",")
      : Array.isArray(t) ? "COMBO" : t === MATCH_TYPE ? "*" : String(t);
    return {
      type,
      name: raw.output_name?.[i] ?? type,
      tooltip: raw.output_tooltips?.[i] || undefined,
    };
  });
  return {
    type,
    displayName: raw.display_name || raw.name || type,
    description: raw.description ?? "",
    category: raw.category ?? "misc",
    outputNode: !!raw.output_node,
    deprecated: !!raw.deprecated,
    ...(Array.isArray(raw.search_aliases)
      ? { searchAliases: raw.search_aliases.filter((a): a is string => typeof a === "string") }
      : {}),
    inputs,
    outputs,
  };
}

export function parseObjectInfo(info: ObjectInfo): Defs {
  const defs: Defs = new Map();
  for (const [type, raw] of Object.entries(info)) {
    if (raw && typeof raw === "object") defs.set(type, parseNodeSchema(type, raw));
  }
  return defs;
}

/** Widget inputs in the order ComfyUI stores their values (`widgets_values`). */
export function widgetInputs(def: NodeDef): InputDef[] {
  return def.inputs.filter((i) => i.widget);
}

const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER;

/** The default value of a widget input, as ComfyUI's frontend would pick it. */
export function defaultValue(input: InputDef): unknown {
  const o = input.options;
  if (input.type === "IMAGECOMPARE") return undefined; // a view of the last run: holds no value
  if (input.type === "BOUNDING_BOX") {
    const d = o.default;
    return d && typeof d === "object" && !Array.isArray(d) ? { ...DEFAULT_BOX, ...(d as object) } : { ...DEFAULT_BOX };
  }
  if (o.default !== undefined) return o.default;
  switch (input.type) {
    case "INT":
    case "FLOAT": {
      const min = typeof o.min === "number" ? o.min : 0;
      return Math.max(min, 0);
    }
    case "STRING":
      return "";
    case "BOOLEAN":
      return false;
    case "COMBO":
      return input.choices?.[0] ?? "";
    case "COLOR":
      return "#000000";
    case "WEBCAM":
      return "";
    default:
      return null;
  }
}

/** Default values of every widget input of a node definition. */
export function defaultValues(def: NodeDef): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const input of widgetInputs(def)) {
    const v = defaultValue(input);
    if (v !== undefined) values[input.name] = v;
  }
  // a new Custom Combo: no options yet, one empty box, as in ComfyUI
  if (def.type === CUSTOM_COMBO && def.inputs.some((i) => i.draw === "customCombo")) Object.assign(values, newComboValues());
  return values;
}

/** Clamp and snap a number the way a widget with min/max/step would. */
export function clampNumber(input: InputDef, value: number): number {
  if (!Number.isFinite(value)) return value;
  const { min, max } = input.options;
  let v = value;
  if (input.type === "INT") v = Math.round(v);
  if (typeof min === "number" && v < min) v = min;
  if (typeof max === "number" && v > max) v = max;
  return v;
}

/** A random seed within the input's range (kept below 2^53 so JSON round-trips exactly). */
export function randomSeed(input: InputDef, rand: () => number = Math.random): number {
  const min = Math.max(0, typeof input.options.min === "number" ? input.options.min : 0);
  const max = Math.min(MAX_SAFE_SEED, typeof input.options.max === "number" ? input.options.max : 2 ** 50);
  const span = Math.min(max - min, 2 ** 50);
  return min + Math.floor(rand() * (span + 1));
}

export type ControlMode = "fixed" | "increment" | "decrement" | "randomize";
export const CONTROL_MODES: ControlMode[] = ["fixed", "increment", "decrement", "randomize"];

/** The value a control_after_generate widget takes after its prompt was queued. */
export function nextControlValue(input: InputDef, value: number | string, mode: ControlMode,
  rand: () => number = Math.random): number | string {
  const exact = input.type === "INT" ? toBigInt(value) : null;
  switch (mode) {
    case "increment":
    case "decrement": {
      const d = mode === "increment" ? 1 : -1;
      // exact beyond 2^53: a seed at 2^64-1 stays there, not at a float 2^64
      if (exact !== null) return fromBigInt(clampBig(input, exact + BigInt(d)));
      return typeof value === "number" ? clampNumber(input, value + d) : value;
    }
    case "randomize":
      return randomSeed(input, rand);
    default:
      return value;
  }
}

/** Categories as a sorted list, for the palette. */
export function categories(defs: Defs): string[] {
  return [...new Set([...defs.values()].map((d) => d.category))].sort();
}
