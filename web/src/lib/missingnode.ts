/**
 * A node whose type this server lacks (a "missing" node, drawn red): as ComfyUI does, it
 * keeps its slots, so every link into or out of it is drawn and can be re-wired once a
 * replacement is installed. Its slots come from the saved document (a ComfyUI workflow's
 * node `inputs` / `outputs`, kept in our layout as `slots`), completed from its links (an
 * API prompt carries no slots): an input named by a link, an output index a link reads.
 */

export type Slot = { name: string; type: string };
export type NodeSlots = { inputs: Slot[]; outputs: Slot[] };

/** The type of a slot nothing says more about. */
export const ANY_TYPE = "*";

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function slotList(v: unknown): Slot[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: Slot[] = [];
  for (const s of v) {
    if (!isObject(s) || typeof s.name !== "string" || !s.name) return undefined;
    out.push({ name: s.name, type: typeof s.type === "string" && s.type ? s.type : ANY_TYPE });
  }
  return out;
}

/** A layout entry's `slots` (our document), or undefined when it is not one. */
export function parseSlots(v: unknown): NodeSlots | undefined {
  if (!isObject(v)) return undefined;
  const inputs = slotList(v.inputs ?? []);
  const outputs = slotList(v.outputs ?? []);
  return inputs && outputs ? { inputs, outputs } : undefined;
}

/**
 * The slots of each node of a ComfyUI UI-format workflow, by id: its inputs (a widget's
 * input only when something is linked to it: otherwise it is the widget) and its outputs,
 * with their names and types.
 */
export function comfyNodeSlots(workflow: unknown): Map<string, NodeSlots> {
  const out = new Map<string, NodeSlots>();
  if (!isObject(workflow) || !Array.isArray(workflow.nodes)) return out;
  for (const node of workflow.nodes) {
    if (!isObject(node) || (typeof node.id !== "number" && typeof node.id !== "string")) continue;
    const inputs: Slot[] = [];
    for (const i of Array.isArray(node.inputs) ? node.inputs : []) {
      if (!isObject(i) || typeof i.name !== "string" || !i.name) continue;
      if (i.widget !== undefined && (i.link === null || i.link === undefined)) continue;
      inputs.push({ name: i.name, type: typeof i.type === "string" && i.type ? i.type : ANY_TYPE });
    }
    const outputs: Slot[] = [];
    for (const [k, o] of (Array.isArray(node.outputs) ? node.outputs : []).entries()) {
      const name = isObject(o) && typeof o.name === "string" && o.name ? o.name : `output ${k}`;
      outputs.push({ name, type: isObject(o) && typeof o.type === "string" && o.type ? o.type : ANY_TYPE });
    }
    out.set(String(node.id), { inputs, outputs });
  }
  return out;
}

/**
 * The slots a missing node shows: the saved ones, then an input for each link into it the
 * saved ones lack (`type`: what feeds it, if known), and outputs up to the highest index a
 * link out of it reads.
 */
export function missingNodeSlots(saved: NodeSlots | undefined,
  linkedInputs: readonly { name: string; type?: string }[],
  linkedOutputs: readonly { slot: number; type?: string }[]): NodeSlots {
  const inputs = [...(saved?.inputs ?? [])];
  for (const l of linkedInputs) {
    if (!inputs.some((i) => i.name === l.name)) inputs.push({ name: l.name, type: l.type || ANY_TYPE });
  }
  const outputs = [...(saved?.outputs ?? [])];
  const slots = linkedOutputs.map((l) => l.slot).filter((s) => Number.isInteger(s) && s >= 0);
  const last = slots.length ? Math.max(...slots) : -1;
  for (let k = outputs.length; k <= last; k++) {
    const type = linkedOutputs.find((l) => l.slot === k && l.type)?.type ?? ANY_TYPE;
    outputs.push({ name: type === ANY_TYPE ? `output ${k}` : type, type });
  }
  return { inputs, outputs };
}
