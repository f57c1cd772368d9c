/**
 * "Run selected outputs": the selected nodes that are output nodes, sent as ComfyUI's
 * `partial_execution_targets` so the server runs only them and what they need.
 */

import type { Defs } from "./schema";

export type SelectableNode = { id: string; type: string; selected?: boolean };

/** Ids of the selected output nodes, in graph order. */
export function selectedOutputs(nodes: readonly SelectableNode[], defs: Defs): string[] {
  return nodes.filter((n) => n.selected && defs.get(n.type)?.outputNode).map((n) => n.id);
}

/** The /prompt body fields for a partial run (none for a whole run). */
export function partialFields(targets?: readonly string[]): { partial_execution_targets?: string[] } {
  return targets && targets.length ? { partial_execution_targets: [...targets] } : {};
}
