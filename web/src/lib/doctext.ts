/**
 * Node docstrings (the `description` of /object_info) as readable blocks: the
 * docstrings are hard-wrapped plain text with a little reST/Markdown (``code``,
 * `code`, **bold**, *emphasis*, "- " lists, "::" literal blocks), so lines are re-joined into
 * paragraphs and list items. Plain data: the help panel renders it with React
 * elements, never as HTML.
 */

export type Span = { text: string; code?: boolean; strong?: boolean; em?: boolean };

export type Block =
  | { kind: "p"; spans: Span[] }
  | { kind: "heading"; spans: Span[] }
  | { kind: "list"; items: Span[][] }
  | { kind: "pre"; text: string };

const BULLET = /^(?:[-*•]|\d+[.)])\s+/;
// *emphasis* only around a word (never "2*8" or "a * b")
const INLINE = /``([^`]+)``|`([^`]+)`|\*\*([^*]+)\*\*|(?<![\w*])\*(?![\s*])([^*\n]+?)(?<!\s)\*(?![\w*])/g;

/** Inline markup of one paragraph: code, bold and emphasis spans. */
export function parseInline(text: string): Span[] {
  const spans: Span[] = [];
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) spans.push({ text: text.slice(last, m.index) });
    if (m[3] !== undefined) spans.push({ text: m[3], strong: true });
    else if (m[4] !== undefined) spans.push({ text: m[4], em: true });
    else spans.push({ text: m[1] ?? m[2], code: true });
    last = m.index + m[0].length;
  }
  if (last < text.length) spans.push({ text: text.slice(last) });
  return spans;
}

const indentOf = (line: string) => line.length - line.trimStart().length;

/** A docstring as blocks: paragraphs, short "Title:" headings, lists and literal blocks. */
export function parseDoc(doc: string): Block[] {
  const lines = doc.replace(/\r\n?/g, "\n").split("\n");
  const blocks: Block[] = [];
  let para: string[] = [];
  let items: string[][] | null = null;
  let literal = false;

  const flush = () => {
    if (para.length) {
      const text = para.join(" ").replace(/\s+/g, " ").trim();
      const short = text.length <= 60 && text.endsWith(":") && !text.endsWith("::");
      literal = text.endsWith("::");
      const shown = literal ? text.slice(0, -1) : text;
      if (shown) blocks.push({ kind: short ? "heading" : "p", spans: parseInline(shown) });
      para = [];
    }
    if (items) {
      blocks.push({ kind: "list", items: items.map((it) => parseInline(it.join(" ").replace(/\s+/g, " ").trim())) });
      items = null;
    }
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!line.trim()) {
      flush();
      continue;
    }
    // An indented block after a paragraph ending in "::" is shown as it is.
    if (literal && indentOf(line) > 0 && !para.length && !items) {
      const base = indentOf(line);
      const out: string[] = [];
      while (i < lines.length && (!lines[i].trim() || indentOf(lines[i]) >= base)) {
        out.push(lines[i].slice(Math.min(base, indentOf(lines[i]) || base)));
        i++;
      }
      i--;
      while (out.length && !out[out.length - 1].trim()) out.pop();
      blocks.push({ kind: "pre", text: out.join("\n") });
      literal = false;
      continue;
    }
    literal = false;
    const trimmed = line.trim();
    if (BULLET.test(trimmed)) {
      if (para.length) flush();
      items ??= [];
      items.push([trimmed.replace(BULLET, "")]);
    } else if (items && indentOf(line) > 0) {
      items[items.length - 1].push(trimmed); // a list item's continuation
    } else {
      if (items) flush();
      para.push(trimmed);
    }
  }
  flush();
  return blocks;
}

/** The first paragraph of a docstring, as one line of plain text (a summary for
 * tooltips, which show no markup: ``code`` and **bold** lose their marks). */
export function summary(doc: string): string {
  const first = doc.trim().split(/\n\s*\n/)[0] ?? "";
  return parseInline(first.replace(/\s+/g, " ").trim()).map((s) => s.text).join("");
}
