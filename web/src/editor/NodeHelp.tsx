/**
 * The help panel: what a node does and how to use it well (its docstring, the
 * `description` of /object_info, rendered readably by lib/doctext.ts), and each
 * input's and output's type, range and tooltip. It shows the selected node, or
 * the node it was opened for while none (or several) is selected.
 */

import type { ReactNode } from "react";
import { type Block, parseDoc, type Span } from "../lib/doctext";
import { formatBound } from "../lib/exactint";
import { isVirtual, NOTE } from "../lib/reroute";
import type { InputDef, NodeDef } from "../lib/schema";
import { useEscape } from "./useEscape";
import { usePanelFocus } from "./useReturnFocus";
import type { GraphStore } from "./useGraphStore";

function Spans({ spans }: { spans: Span[] }) {
  return (
    <>
      {spans.map((s, i) => (s.code ? <code key={i}>{s.text}</code> : s.strong ? <strong key={i}>{s.text}</strong>
        : s.em ? <em key={i}>{s.text}</em> : s.text))}
    </>
  );
}

export function DocText({ text }: { text: string }) {
  const blocks = parseDoc(text);
  const render = (b: Block, i: number): ReactNode => {
    switch (b.kind) {
      case "heading":
        return <h4 key={i}><Spans spans={b.spans} /></h4>;
      case "list":
        return <ul key={i}>{b.items.map((it, j) => <li key={j}><Spans spans={it} /></li>)}</ul>;
      case "pre":
        return <pre key={i}>{b.text}</pre>;
      default:
        return <p key={i}><Spans spans={b.spans} /></p>;
    }
  };
  return <div className="sf-doc">{blocks.map(render)}</div>;
}

/** "INT, 1–150, default 20" and the like. */
function inputFacts(input: InputDef): string {
  const o = input.options;
  const facts = [input.type === "COMBO" ? `one of ${input.choices?.length ?? 0} choices` : input.type];
  if (!input.required) facts.push("optional");
  const min = formatBound(input, "min");
  const max = formatBound(input, "max");
  if (min !== null || max !== null) facts.push(`${min ?? "…"}–${max ?? "…"}`); // exact for 64-bit seeds
  if (o.default !== undefined && typeof o.default !== "object" && String(o.default).length <= 40) {
    facts.push(`default ${JSON.stringify(o.default)}`);
  }
  // an input a DynamicCombo option brings: shown only when one of them is chosen
  if (input.parent) facts.push(`with ${input.parent.name} ${input.parent.keys.map((k) => JSON.stringify(k)).join(" or ")}`);
  return facts.join(", ");
}

function DefHelp({ def }: { def: NodeDef }) {
  return (
    <>
      <h2>{def.displayName}</h2>
      <div className="sf-help-meta">{def.type} · {def.category}{def.deprecated ? " · deprecated" : ""}</div>
      {def.description ? <DocText text={def.description} /> : <p className="sf-help-meta">No description.</p>}
      {def.inputs.length > 0 && (
        <>
          <h3>Inputs</h3>
          <dl>
            {def.inputs.map((i) => (
              <div key={i.name} data-help-input={i.name}>
                <dt>{i.name} <span className="sf-help-meta">{inputFacts(i)}</span></dt>
                {i.options.tooltip && <dd>{i.options.tooltip}</dd>}
              </div>
            ))}
          </dl>
        </>
      )}
      {def.outputs.length > 0 && (
        <>
          <h3>Outputs</h3>
          <dl>
            {def.outputs.map((o, j) => (
              <div key={j}>
                <dt>{o.name} <span className="sf-help-meta">{o.type}</span></dt>
                {o.tooltip && <dd>{o.tooltip}</dd>}
              </div>
            ))}
          </dl>
        </>
      )}
    </>
  );
}

const VIRTUAL_HELP: Record<string, string> = {
  Reroute: "A dot that passes one link through, to tidy long links. It carries its source's type and " +
    "refuses links of another type. It is canvas-only: the run links the real source.",
  [NOTE]: "Free text saved with the workflow (and in its images), never run. Resize it from its corners.",
};

export function NodeHelp({ g, nodeId, onClose }: { g: GraphStore; nodeId: string; onClose(): void }) {
  const selected = g.nodes.filter((n) => n.selected);
  const node = (selected.length === 1 ? selected[0] : undefined) ?? g.nodes.find((n) => n.id === nodeId);
  const def = node ? g.defsRef.current.get(node.data.type) : undefined;

  useEscape(onClose);
  const box = usePanelFocus<HTMLElement>(); // closed: the focus goes back to the node's help button

  return (
    <aside ref={box} tabIndex={-1} className="sf-help nowheel" role="dialog" aria-label="node help" data-node-type={node?.data.type}>
      <button type="button" className="sf-help-close" aria-label="close help" onClick={onClose}>×</button>
      {!node ? (
        <p className="sf-help-meta">Select a node to see its help.</p>
      ) : def ? (
        <DefHelp def={def} />
      ) : isVirtual(node.data.type) ? (
        <>
          <h2>{node.data.type}</h2>
          <p>{VIRTUAL_HELP[node.data.type]}</p>
        </>
      ) : (
        <p>Unknown node type “{node.data.type}”: not available on this server.</p>
      )}
    </aside>
  );
}
