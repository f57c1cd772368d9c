import { describe, expect, it } from "vitest";
import { processDynamicPrompt, queuedPrompt, resolveDynamicPrompts, stripComments } from "./dynamicprompts";
import { createNode, type Graph, graphToPrompt } from "./graph";
import { parseObjectInfo } from "./schema";
import { testDefs, testObjectInfo } from "./testdefs";

/** A seeded generator (mulberry32): the same seed gives the same picks. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Always `r`. */
const fixed = (r: number) => () => r;

/** The values in turn (then the last again), counting the calls. */
function sequence(...values: number[]): (() => number) & { calls: number } {
  const f = Object.assign(() => values[Math.min(f.calls++, values.length - 1)], { calls: 0 });
  return f;
}

describe("processDynamicPrompt", () => {
  it("leaves plain text as it is and draws nothing", () => {
    const random = sequence(0.5);
    expect(processDynamicPrompt("a red cube, (glossy:1.2)", random)).toBe("a red cube, (glossy:1.2)");
    expect(processDynamicPrompt("", random)).toBe("");
    expect(random.calls).toBe(0);
  });

  it("removes line and block comments", () => {
    expect(processDynamicPrompt("a cat // not a dog\non a mat", fixed(0))).toBe("a cat \non a mat");
    expect(processDynamicPrompt("/*\nheader\n*/a /* inline */cat\n// whole line\nend", fixed(0))).toBe("a cat\n\nend");
    expect(processDynamicPrompt("{red/* or */|blue// no\n}", fixed(0))).toBe("red");
    // as in ComfyUI, `//` starts a comment anywhere, also in a URL
    expect(stripComments("see http://example.com")).toBe("see http:");
  });

  it("picks one option of each choice", () => {
    expect(processDynamicPrompt("a {red|green|blue} ball", fixed(0))).toBe("a red ball");
    expect(processDynamicPrompt("a {red|green|blue} ball", fixed(0.5))).toBe("a green ball");
    expect(processDynamicPrompt("a {red|green|blue} ball", fixed(0.99))).toBe("a blue ball");
    expect(processDynamicPrompt("{a|b} and {c|d}", sequence(0, 0.9))).toBe("a and d");
    expect(processDynamicPrompt("{only}", fixed(0.7))).toBe("only");
  });

  it("keeps empty options", () => {
    expect(processDynamicPrompt("{|a}", fixed(0))).toBe("");
    expect(processDynamicPrompt("{|a}", fixed(0.9))).toBe("a");
    expect(processDynamicPrompt("{a|}", fixed(0.9))).toBe("");
    expect(processDynamicPrompt("{}", fixed(0.5))).toBe("");
    expect(processDynamicPrompt("{||}", fixed(0.5))).toBe("");
    const picks = [0, 0.3, 0.5, 0.75, 0.999].map((r) => processDynamicPrompt("{|a||b|}", fixed(r)));
    expect(picks).toEqual(["", "a", "", "b", ""]);
    expect(processDynamicPrompt("a {very |}big cat", fixed(0))).toBe("a very big cat");
  });

  it("resolves nested choices inside the option picked", () => {
    expect(processDynamicPrompt("{a|{b|{c|d}}}", fixed(0))).toBe("a");
    expect(processDynamicPrompt("{a|{b|{c|d}}}", fixed(0.99))).toBe("d");
    // the outer choice is drawn first, then the one inside the option it picked
    const random = sequence(0.99, 0);
    expect(processDynamicPrompt("{a|{b|c}}", random)).toBe("b");
    expect(random.calls).toBe(2);
    // a nested choice in an option not picked draws nothing
    const once = sequence(0);
    expect(processDynamicPrompt("{a|{b|c}}", once)).toBe("a");
    expect(once.calls).toBe(1);
    expect(processDynamicPrompt("{a|{b|{c|{d|{e|{f|{g}}1}2}3}4}5}", fixed(0.99))).toBe("g12345");
    expect(processDynamicPrompt("1{a|b|{c|d}}2{e|f}3", fixed(0.5))).toBe("1b2f3");
    expect(processDynamicPrompt("{a|{b||c}|}", fixed(0.5))).toBe("");
  });

  it("keeps escaped braces and bars literal", () => {
    expect(processDynamicPrompt("\\{a|b\\}", fixed(0))).toBe("{a|b}");
    expect(processDynamicPrompt("a\\|b", fixed(0))).toBe("a|b");
    expect(processDynamicPrompt("{\\{x\\}\\|y}", fixed(0))).toBe("{x}|y");
    expect(processDynamicPrompt("{a|{b|\\{c\\}}}", fixed(0.99))).toBe("{c}");
    expect(processDynamicPrompt("{a|\\}", fixed(0.99))).toBe("}");
    expect(processDynamicPrompt("<{x|y}>/*c*/ ({p|q}:2) \\{kept\\}!", fixed(0.99))).toBe("<y> (q:2) {kept}!");
    // other escapes stay as typed (a prompt weight's \( \) keeps its meaning)
    expect(processDynamicPrompt("\\(star\\) {a|b}", fixed(0))).toBe("\\(star\\) a");
    // a backslash ending the text stays
    expect(processDynamicPrompt("a\\", fixed(0))).toBe("a\\");
  });

  it("leaves unbalanced braces as ComfyUI does", () => {
    // a `}` with no `{` is plain text
    expect(processDynamicPrompt("a} b", fixed(0))).toBe("a} b");
    expect(processDynamicPrompt("{a|b}}", fixed(0))).toBe("a}");
    // a `{` never closed takes the rest of the text as its options
    expect(processDynamicPrompt("{option1|option2|{nested1|nested2", fixed(0))).toBe("option1");
    expect(processDynamicPrompt("{option1|option2|{nested1|nested2", fixed(0.4))).toBe("option2");
    expect(processDynamicPrompt("{option1|option2|{nested1|nested2", fixed(0.99))).toBe("nested2");
    expect(processDynamicPrompt("x {a|b", fixed(0))).toBe("x a");
  });

  it("stays in bounds whatever random returns", () => {
    expect(processDynamicPrompt("{a|b}", fixed(1))).toBe("b");
    expect(processDynamicPrompt("{a|b}", fixed(-0.5))).toBe("a");
    expect(processDynamicPrompt("{a|b}", fixed(Number.NaN))).toBe("a");
  });

  it("is repeatable with a seeded random and uses every option", () => {
    const text = "a {red|green|blue} {cat|dog} // comment";
    const one = Array.from({ length: 20 }, (_, i) => processDynamicPrompt(text, seeded(i)));
    const two = Array.from({ length: 20 }, (_, i) => processDynamicPrompt(text, seeded(i)));
    expect(one).toEqual(two);
    for (const word of ["red", "green", "blue", "cat", "dog"]) expect(one.some((t) => t.includes(word))).toBe(true);
    for (const t of one) expect(t).toMatch(/^a (red|green|blue) (cat|dog) $/);
    const random = seeded(7);
    const batch = Array.from({ length: 8 }, () => processDynamicPrompt("{a|b|c|d}", random));
    expect(new Set(batch).size).toBeGreaterThan(1);
  });

  it("defaults to Math.random", () => {
    expect(["red", "blue"]).toContain(processDynamicPrompt("{red|blue}"));
  });
});

describe("dynamic prompts in the queued prompt", () => {
  const defs = testDefs();

  it("reads the schema's dynamicPrompts flag", () => {
    const text = defs.get("CLIPTextEncode")!.inputs.find((i) => i.name === "text")!;
    expect(text.options.dynamicPrompts).toBe(true);
    const prefix = defs.get("SaveImage")!.inputs.find((i) => i.name === "filename_prefix")!;
    expect(prefix.options.dynamicPrompts).toBeUndefined();
  });

  it("resolves only the inputs marked dynamicPrompts, not links, without changing the prompt", () => {
    const info = testObjectInfo();
    // a custom pack's own prompt input
    info.PackPrompt = {
      name: "PackPrompt", display_name: "Pack Prompt", category: "test",
      input: { required: { prompt: ["STRING", { multiline: true, dynamicPrompts: true }], note: ["STRING", {}] } },
      output: ["STRING"],
    };
    const packDefs = parseObjectInfo(info);
    const prompt = {
      "1": { class_type: "CLIPTextEncode", inputs: { text: "a {red|blue} cube // typed", clip: ["9", 1] } },
      "2": { class_type: "CLIPTextEncode", inputs: { text: ["5", 0], clip: ["9", 1] } },
      "3": { class_type: "SaveImage", inputs: { filename_prefix: "{a|b}", images: ["8", 0] } },
      "4": { class_type: "PackPrompt", inputs: { prompt: "{x|y}", note: "{x|y}" } },
      "5": { class_type: "Unknown", inputs: { text: "{x|y}" } },
    };
    const before = structuredClone(prompt);
    const out = resolveDynamicPrompts(prompt, packDefs, fixed(0.9));
    expect(out["1"].inputs).toEqual({ text: "a blue cube ", clip: ["9", 1] });
    expect(out["2"]).toBe(prompt["2"]);
    expect(out["3"]).toBe(prompt["3"]);
    expect(out["4"].inputs).toEqual({ prompt: "y", note: "{x|y}" });
    expect(out["5"]).toBe(prompt["5"]);
    expect(prompt).toEqual(before);
  });

  it("posts resolved text, one pick per queued prompt, while the node and the saved workflow keep the typed text", () => {
    const typed = "a {red|blue} cube // my note";
    const node = createNode(defs, "CLIPTextEncode", "1", [0, 0]);
    node.values.text = typed;
    const save = createNode(defs, "SaveImage", "2", [300, 0]);
    save.values.filename_prefix = "out/{a|b}";
    const graph: Graph = { nodes: [node, save], links: [], groups: [] };
    const random = sequence(0, 0.9); // the first prompt picks red, the second blue

    // a batch count of 2: each queued prompt is built and resolved on its own
    const first = queuedPrompt(graph, defs, random);
    const second = queuedPrompt(graph, defs, random);

    expect(first.prompt["1"].inputs.text).toBe("a red cube ");
    expect(second.prompt["1"].inputs.text).toBe("a blue cube ");
    expect(first.prompt["2"].inputs.filename_prefix).toBe("out/{a|b}"); // not a dynamic prompt
    // the workflow saved with the image (extra_pnginfo) has the text as typed
    expect(first.workflow.prompt["1"].inputs.text).toBe(typed);
    expect(second.workflow.prompt["1"].inputs.text).toBe(typed);
    // the node on the canvas keeps the typed text
    expect(node.values.text).toBe(typed);
    expect(graphToPrompt(graph, defs)["1"].inputs.text).toBe(typed);
  });
});
