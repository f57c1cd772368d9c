import { describe, expect, it } from "vitest";
import { parseDoc, parseInline, summary } from "./doctext";

describe("docstrings as readable blocks", () => {
  it("re-joins hard-wrapped lines into paragraphs", () => {
    expect(parseDoc("One sentence\nwrapped here.\n\nSecond.")).toEqual([
      { kind: "p", spans: [{ text: "One sentence wrapped here." }] },
      { kind: "p", spans: [{ text: "Second." }] },
    ]);
  });

  it("reads a short 'Title:' line as a heading and '- ' lines as a list", () => {
    const blocks = parseDoc("What works:\n- add the new value AND remove\n  the old one\n- scale 15-20\nAfter.");
    expect(blocks).toEqual([
      { kind: "heading", spans: [{ text: "What works:" }] },
      { kind: "list", items: [[{ text: "add the new value AND remove the old one" }], [{ text: "scale 15-20" }]] },
      { kind: "p", spans: [{ text: "After." }] },
    ]);
  });

  it("marks ``code``, `code` and **bold**", () => {
    expect(parseInline("use ``strength`` or `cfg`, **positive** prompt")).toEqual([
      { text: "use " }, { text: "strength", code: true }, { text: " or " }, { text: "cfg", code: true },
      { text: ", " }, { text: "positive", strong: true }, { text: " prompt" },
    ]);
  });

  it("marks *emphasis* around words only", () => {
    expect(parseInline("give a new *shape* spatial capacity")).toEqual([
      { text: "give a new " }, { text: "shape", em: true }, { text: " spatial capacity" },
    ]);
    expect(parseInline("2*8 pixels, a * b, x*")).toEqual([{ text: "2*8 pixels, a * b, x*" }]);
  });

  it("keeps a literal block after '::' as it is", () => {
    const blocks = parseDoc("Example::\n\n    a = 1\n      b = 2\n\nDone.");
    expect(blocks).toEqual([
      { kind: "p", spans: [{ text: "Example:" }] },
      { kind: "pre", text: "a = 1\n  b = 2" },
      { kind: "p", spans: [{ text: "Done." }] },
    ]);
  });

  it("summarises with the first paragraph", () => {
    expect(summary("Attach SEGA\nto a model.\n\nMore.")).toBe("Attach SEGA to a model.");
    expect(summary("Excite the ``words`` of a **prompt**.\n\nMore.")).toBe("Excite the words of a prompt.");
    expect(parseDoc("")).toEqual([]);
  });
});
