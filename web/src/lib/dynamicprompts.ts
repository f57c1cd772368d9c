/**
 * ComfyUI's dynamic prompts: a prompt box whose input is marked `dynamicPrompts` in
 * /object_info (CLIPTextEncode's text, SDXL's text_g / text_l, ...) may hold
 *
 * - comments: `// to the end of the line` and `/* a block *\/`, removed;
 * - choices: `{red|blue|green}`, one option picked at random; options may be empty
 *   (`{|very }`) and may hold choices of their own (`{a|{b|c}}`);
 * - escapes: `\{`, `\}` and `\|` are the literal characters; a backslash before any other
 *   character stays as typed (`\(` keeps its meaning for prompt weights).
 *
 * As in ComfyUI's front end, this happens when the canvas queues: each queued prompt (each of
 * a batch count) gets its own pick, the node keeps the text as typed, and the workflow saved
 * with the image (extra_pnginfo) has the typed text too. A `}` with no `{` stays as it is; a
 * `{` never closed takes the rest of the text as its options (ComfyUI does the same). The
 * server, the CLI and the API take the text as it is.
 */

import { type ApiPrompt, type Graph, graphToDocument, type WorkflowDocument } from "./graph";
import { exactPrompt } from "./exactint";
import type { Defs } from "./schema";

/** `// line` and `/* block *\/` comments (a block comment may span lines). */
const COMMENT = /\/\*[\s\S]*?\*\/|\/\/.*/g;
/** An escaped brace or bar, made literal once its choice is made. */
const ESCAPED = /\\([{}|])/g;

/** The text without its `//` and `/* *\/` comments. */
export function stripComments(text: string): string {
  return text.replace(COMMENT, "");
}

/** Index `random()` into `count` options, within bounds whatever `random` returns. */
function pickIndex(count: number, random: () => number): number {
  const r = random();
  if (!Number.isFinite(r)) return 0;
  return Math.min(count - 1, Math.max(0, Math.floor(r * count)));
}

/**
 * The options of the choice whose `{` is just before `from`: split at the bars outside
 * nested braces, nested choices and escapes kept as typed; `end` is just past its `}` (the
 * end of the text when it is never closed).
 */
function readChoice(text: string, from: number): { options: string[]; end: number } {
  const options: string[] = [];
  let option = "";
  let depth = 0;
  let i = from;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\") {
      option += text.slice(i, i + 2); // the escape and what it escapes, as typed
      i += 2;
      continue;
    }
    i++;
    if (c === "}" && depth === 0) {
      options.push(option);
      return { options, end: i };
    }
    if (c === "|" && depth === 0) {
      options.push(option);
      option = "";
      continue;
    }
    if (c === "{") depth++;
    else if (c === "}") depth--;
    option += c;
  }
  options.push(option);
  return { options, end: text.length };
}

/**
 * The text a dynamic prompt queues: comments removed, each `{a|b|c}` replaced by one of its
 * options picked with `random` (a choice inside the picked option is then resolved in turn),
 * escapes made literal. `random` returns [0, 1) as Math.random does; pass a seeded one for a
 * repeatable result.
 */
export function processDynamicPrompt(text: string, random: () => number = Math.random): string {
  const source = stripComments(text);
  let out = "";
  let i = 0;
  while (i < source.length) {
    const c = source[i];
    if (c === "\\") {
      // kept as typed until the end, so an escaped brace never opens or closes a choice
      // (a backslash ending the text stays a backslash)
      out += source.slice(i, i + 2);
      i += 2;
    } else if (c === "{") {
      const { options, end } = readChoice(source, i + 1);
      out += processDynamicPrompt(options[pickIndex(options.length, random)], random);
      i = end;
    } else {
      out += c;
      i++;
    }
  }
  return out.replace(ESCAPED, "$1");
}

/**
 * The prompt with every dynamic-prompt widget's text resolved (the inputs whose schema says
 * `dynamicPrompts: true` and that hold text, not a link). `prompt` is left as it is: nodes
 * with nothing to resolve are shared, the others copied.
 */
export function resolveDynamicPrompts(prompt: ApiPrompt, defs: Defs, random: () => number = Math.random): ApiPrompt {
  const out: ApiPrompt = {};
  for (const [id, node] of Object.entries(prompt)) {
    let inputs = node.inputs;
    for (const input of defs.get(node.class_type)?.inputs ?? []) {
      if (!input.widget || input.options.dynamicPrompts !== true) continue;
      const value = inputs[input.name];
      if (typeof value !== "string") continue;
      const resolved = processDynamicPrompt(value, random);
      if (resolved !== value) inputs = { ...inputs, [input.name]: resolved };
    }
    out[id] = inputs === node.inputs ? node : { ...node, inputs };
  }
  return out;
}

/**
 * What one press of Queue posts for `graph`: the prompt that runs (dynamic prompts resolved
 * with `random`, 64-bit integers exact) and the document saved with its images
 * (extra_pnginfo `workflow`), which keeps the text as typed. Call it once per queued prompt.
 */
export function queuedPrompt(graph: Graph, defs: Defs, random: () => number = Math.random): {
  prompt: ApiPrompt; workflow: WorkflowDocument;
} {
  const workflow = graphToDocument(graph, defs);
  return { prompt: exactPrompt(resolveDynamicPrompts(workflow.prompt, defs, random), defs), workflow };
}
