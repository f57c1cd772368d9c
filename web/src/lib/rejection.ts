/**
 * A rejected prompt in one line: how many inputs need attention and on which nodes. The
 * messages themselves are shown on the nodes' inputs (lib/runstore.ts), not repeated here.
 */

import type { NodeErrors } from "./runstore";

export type Rejection = { text: string; nodes: string[] };

const plural = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

/** "3 inputs need attention: KSampler #3 (seed, steps), Save Image #9 (images)"; null without node errors. */
export function summariseRejection(nodeErrors: NodeErrors, titleOf: (id: string) => string, shown = 3): Rejection | null {
  let inputs = 0;
  let other = 0;
  const parts: string[] = [];
  const nodes: string[] = [];
  const ids = Object.keys(nodeErrors).sort((a, b) => Number(a) - Number(b) || a.localeCompare(b));
  for (const id of ids) {
    const errors = nodeErrors[id]?.errors ?? [];
    if (!errors.length) continue;
    const names = [...new Set(errors.map((e) => e.extra_info?.input_name).filter((n): n is string => !!n))];
    inputs += names.length;
    other += errors.filter((e) => !e.extra_info?.input_name).length;
    nodes.push(id);
    parts.push(`${titleOf(id)} #${id}${names.length ? ` (${names.join(", ")})` : ""}`);
  }
  if (!nodes.length) return null;
  const head = inputs && other
    ? `${plural(inputs, "input", "inputs")} and ${plural(other, "other problem", "other problems")} need attention`
    : inputs ? `${plural(inputs, "input needs", "inputs need")} attention`
      : `${plural(other, "problem needs", "problems need")} attention`;
  const more = parts.length > shown ? `, and ${plural(parts.length - shown, "more node", "more nodes")}` : "";
  return { text: `${head}: ${parts.slice(0, shown).join(", ")}${more}`, nodes };
}
