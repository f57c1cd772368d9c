/**
 * One message per input. A widget checks its own value as it is edited (a number out of its
 * range, a colour that is none, a crop box out of bounds, a combo value that is no choice or a
 * model the server lacks); a refused prompt brings the server's message for the same input.
 * Both showing said the same thing twice, so an input shows one:
 *
 * - after a refused prompt, the server's: it is what refused the run (the toast points at it),
 *   it names the input and the value it got ("input 'steps': ... (got -5)"), and it covers what
 *   the widget cannot see (a node's own checks);
 * - while editing, the widget's own: an edit takes the server's message away
 *   (RunStore.clearInputErrors), and the widget's then describes the value as it now is.
 *
 * So the message shown always describes the value shown.
 */

import { boxIssues } from "./boundingbox";
import { colorIssue } from "./color";
import { checkCombo } from "./missingmodels";
import type { InputDef } from "./schema";
import { numberIssue } from "./widgetcheck";

/** What the widget of `input` says is wrong with `value`, or null. */
export function widgetIssue(input: InputDef, value: unknown): string | null {
  if (input.draw === "customCombo") return null;
  if (input.draw === "color" || input.type === "COLOR") return colorIssue(value == null ? "" : String(value));
  switch (input.type) {
    case "INT":
    case "FLOAT":
      return numberIssue(input, value);
    case "BOUNDING_BOX": {
      const issues = boxIssues(value);
      return issues.length ? issues.join("; ") : null;
    }
    case "COMBO":
      return checkCombo(input, value)?.message ?? null;
    default:
      return null;
  }
}

export type ShownIssue = { message: string; own: boolean };

/**
 * The messages an input row shows: the server's about that input when a refused prompt left
 * some (each once), else its widget's own issue (`own`), else none.
 */
export function inputMessages(own: string | null, server: readonly { message: string }[]): ShownIssue[] {
  if (server.length) return [...new Set(server.map((s) => s.message))].map((message) => ({ message, own: false }));
  return own ? [{ message: own, own: true }] : [];
}
