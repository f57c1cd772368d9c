/**
 * One node on the canvas. Memoised: it re-renders when its own data changes,
 * when its links change, or when its record in the run store changes — never
 * because another node ran or moved.
 */

import { Handle, NodeResizer, type NodeProps, Position, useNodeConnections, useReactFlow } from "@xyflow/react";
import { memo, type ReactNode, useLayoutEffect, useMemo, useRef, useState } from "react";
import { viewUrl } from "../api";
import { summary } from "../lib/doctext";
import { inputMessages, widgetIssue } from "../lib/inputissue";
import { ANY_TYPE, missingNodeSlots, type NodeSlots } from "../lib/missingnode";
import type { NodeIssue } from "../lib/runstore";
import { type ControlMode, helpButtonLabel, type InputDef, visibleInputs } from "../lib/schema";
import { typeColor } from "../lib/types";
import { useEditor, useNodeRun } from "./context";
import { inHandle, OUTPUT_HANDLE, outHandle, slotOf, type SfNode as SfNodeType, type SfNodeData } from "./flow";
import { LossCurve } from "./LossCurve";
import { titleId, useNodeLabel } from "./nodeLabel";
import { Widget } from "./widgets";

/**
 * One error message, one line high: a long one is cut with an ellipsis and a "more" button
 * opens it (its full text is also the tooltip), so a rejected prompt does not grow the node
 * over the node below it. The details (a traceback) stay folded under it.
 */
function IssueLine({ message, className = "", textClassName = "", children }: {
  message: string; className?: string; textClassName?: string; children?: ReactNode;
}) {
  const [open, setOpen] = useState(false);
  const [cut, setCut] = useState(false);
  const text = useRef<HTMLSpanElement>(null);
  useLayoutEffect(() => {
    const el = text.current;
    if (el && !open) setCut(el.scrollWidth > el.clientWidth + 1 || message.includes("\n"));
  }, [message, open]);
  return (
    <div className={`sf-issue sf-issue-line${open ? " sf-issue-open" : ""} ${className}`} role="alert" title={message}>
      <span ref={text} className={`sf-issue-text ${textClassName}`}>{message}</span>
      {(cut || open) && (
        <button type="button" className="nodrag sf-issue-more" aria-expanded={open}
          onClick={() => setOpen((o) => !o)}>{open ? "less" : "more"}</button>
      )}
      {children}
    </div>
  );
}

function InputRow({ nodeId, input, value, values, linked, issues, control }: {
  nodeId: string; input: InputDef; value: unknown; values: Readonly<Record<string, unknown>>; linked: boolean;
  issues: NodeIssue[]; control?: ControlMode;
}) {
  const { primitiveFor } = useEditor();
  const color = typeColor(input.type);
  // one message per input (lib/inputissue.ts): a refused prompt's for it, else the widget's own
  const messages = inputMessages(input.widget && !linked ? widgetIssue(input, value) : null, issues);
  return (
    <div
      className={`sf-input${messages.length ? " sf-has-issue" : ""}${input.widget ? " sf-widget-row" : ""}`}
      data-input={input.name}
      data-tooltip={input.options.tooltip || undefined}
    >
      {input.type !== "IMAGECOMPARE" && ( // a view of the node's result: nothing links to it
        <Handle
          type="target"
          position={Position.Left}
          id={inHandle(input.name)}
          className={`sf-handle${input.widget ? " sf-handle-widget" : ""}`}
          style={{ background: linked || !input.widget ? color : undefined, borderColor: color }}
          data-type={input.type}
          onDoubleClick={input.widget && !linked ? (e) => {
            e.stopPropagation(); // not the canvas's double-click (the node palette)
            primitiveFor(nodeId, input.name);
          } : undefined}
        />
      )}
      <div className="sf-input-label">
        <span className={input.parent ? "sf-sub-input" : undefined}>{input.label ?? input.name}</span>
        {!input.widget && <span className="sf-type">{input.type}</span>}
        {!input.required && !input.widget && <span className="sf-type">optional</span>}
      </div>
      {input.widget && !linked && <Widget nodeId={nodeId} input={input} value={value} values={values} control={control} />}
      {input.widget && linked && <div className="sf-linked">linked</div>}
      {messages.map((m, i) => (
        // the widget's own message: its text is the .sf-widget-issue (the "more" button beside it)
        <IssueLine key={i} message={m.message} className={m.own ? "sf-own-issue" : ""} textClassName={m.own ? "sf-widget-issue" : ""} />
      ))}
    </div>
  );
}

/**
 * The slots of a node whose type this server lacks, as ComfyUI draws a missing node: the
 * saved document's inputs and outputs, and any its links name besides (lib/missingnode.ts),
 * each with a handle, so every link into or out of it is drawn and can be re-wired.
 */
function MissingSlots({ saved }: { saved?: NodeSlots }) {
  const { defs } = useEditor();
  const rf = useReactFlow();
  const into = useNodeConnections({ handleType: "target" });
  const outOf = useNodeConnections({ handleType: "source" });
  const slots = useMemo(() => {
    const edgeType = (edgeId: string) => (rf.getEdge(edgeId)?.data as { type?: string } | undefined)?.type;
    const inputs = into.filter((c) => c.targetHandle?.startsWith("i:"))
      .map((c) => ({ name: (c.targetHandle as string).slice(2), type: edgeType(c.edgeId) }));
    const outputs = outOf.map((c) => {
      const target = rf.getNode(c.target)?.data as SfNodeData | undefined;
      const input = target ? defs.get(target.type)?.inputs.find((i) => `i:${i.name}` === c.targetHandle) : undefined;
      return { slot: slotOf(c.sourceHandle), type: input?.type };
    });
    return missingNodeSlots(saved, inputs, outputs);
  }, [saved, into, outOf, rf, defs]);
  const linkedIn = new Set(into.map((c) => c.targetHandle));
  const colour = (type: string) => (type === ANY_TYPE ? undefined : typeColor(type));
  return (
    <>
      {slots.outputs.length > 0 && (
        <div className="sf-outputs">
          {slots.outputs.map((o, i) => (
            <div key={i} className="sf-output" data-output={i}>
              <span>{o.name}</span>
              <Handle type="source" position={Position.Right} id={outHandle(i)} className={OUTPUT_HANDLE}
                style={{ background: colour(o.type), borderColor: colour(o.type) }} data-type={o.type} />
            </div>
          ))}
        </div>
      )}
      {slots.inputs.map((input) => (
        <div key={input.name} className="sf-input sf-missing-input" data-input={input.name}>
          <Handle type="target" position={Position.Left} id={inHandle(input.name)} className="sf-handle"
            style={{ background: linkedIn.has(inHandle(input.name)) ? colour(input.type) : undefined, borderColor: colour(input.type) }}
            data-type={input.type} />
          <div className="sf-input-label">
            <span>{input.name}</span>
            {input.type !== ANY_TYPE && <span className="sf-type">{input.type}</span>}
          </div>
        </div>
      ))}
    </>
  );
}

function Title({ id, title, fallback }: { id: string; title?: string; fallback: string }) {
  const { setTitle } = useEditor();
  const [editing, setEditing] = useState(false);
  if (editing) {
    return (
      <input
        className="nodrag sf-title-edit"
        autoFocus
        defaultValue={title ?? fallback}
        id={titleId(id)}
        aria-label="node title"
        onBlur={(e) => {
          const v = e.target.value.trim();
          setTitle(id, v && v !== fallback ? v : undefined);
          setEditing(false);
        }}
        onKeyDown={(e) => {
          if (e.key === "Enter") (e.target as HTMLInputElement).blur();
          if (e.key === "Escape") setEditing(false);
        }}
      />
    );
  }
  return (
    <span className="sf-title" id={titleId(id)} onDoubleClick={() => setEditing(true)} title="Double-click to rename">
      {title ?? fallback}
    </span>
  );
}

function SfNodeImpl({ id, data, selected }: NodeProps<SfNodeType>) {
  const { defs, store, openImage, showHelp } = useEditor();
  const run = useNodeRun(store, id);
  const label = useNodeLabel(id);
  const connections = useNodeConnections({ handleType: "target" });
  const def = defs.get(data.type);
  const linked = useMemo(() => {
    const s = new Set<string>();
    for (const c of connections) if (c.targetHandle) s.add(c.targetHandle.slice(2));
    return s;
  }, [connections]);

  const issuesByInput = useMemo(() => {
    const m = new Map<string, NodeIssue[]>();
    const general: NodeIssue[] = [];
    for (const issue of run.errors ?? []) {
      if (issue.input && def?.inputs.some((i) => i.name === issue.input)) {
        m.set(issue.input, [...(m.get(issue.input) ?? []), issue]);
      } else general.push(issue);
    }
    return { m, general };
  }, [run.errors, def]);

  const classes = ["sf-node"];
  if (selected) classes.push("selected");
  if (run.status) classes.push(`sf-${run.status}`);
  if (run.errors?.length) classes.push("sf-error");
  if (!def) classes.push("sf-unknown");
  if (data.mode) classes.push(`sf-${data.mode}`);
  if (data.collapsed) classes.push("sf-collapsed");
  if (data.pinned) classes.push("sf-pinned");

  const progress = run.progress && run.progress.max > 0 ? Math.min(1, run.progress.value / run.progress.max) : null;
  const noIssues: NodeIssue[] = [];

  return (
    <div ref={label} className={classes.join(" ")} data-node-id={id} data-node-type={data.type} data-status={run.status ?? ""}
      style={data.size && !data.collapsed ? { minHeight: data.size[1] } : undefined}>
      {!data.collapsed && (
        <NodeResizer isVisible={selected && !data.pinned} minWidth={200} minHeight={60}
          lineClassName="sf-resize-line" handleClassName="sf-resize-handle" />
      )}
      <div className="sf-header sf-drag" data-tooltip={def?.description ? summary(def.description) : data.type}
        style={data.color ? { background: data.color } : undefined}>
        <Title id={id} title={data.title} fallback={def?.displayName ?? data.type} />
        {data.mode && <span className="sf-mode" title={data.mode === "muted" ? "Muted: left out of the run" : "Bypassed: its input passes through"}>{data.mode}</span>}
        {data.pinned && <span className="sf-mode" title="Pinned: cannot be moved">pinned</span>}
        <span className="sf-id">#{id}</span>
        {def && (
          <button type="button" className="nodrag sf-help-button" aria-label={helpButtonLabel(data, defs)}
            title="What this node does and how to use it"
            onClick={() => showHelp(id)}>?</button>
        )}
      </div>
      {progress !== null && (
        <div className="sf-progress" role="progressbar" aria-valuenow={run.progress!.value} aria-valuemax={run.progress!.max}>
          <div style={{ width: `${progress * 100}%` }} />
        </div>
      )}
      <div className="sf-body">
        {def ? (
          <>
            {def.outputs.length > 0 && (
              <div className="sf-outputs">
                {def.outputs.map((o, i) => (
                  <div key={i} className="sf-output" data-output={i} data-tooltip={o.tooltip}>
                    <span>{o.name}</span>
                    <Handle
                      type="source"
                      position={Position.Right}
                      id={outHandle(i)}
                      className={OUTPUT_HANDLE}
                      style={{ background: typeColor(o.type), borderColor: typeColor(o.type) }}
                      data-type={o.type}
                    />
                  </div>
                ))}
              </div>
            )}
            {/* a training node's curve near its top (Train LoRA has some twenty widget rows): seen without panning */}
            {run.losses && run.losses.length > 0 && <LossCurve losses={run.losses} resumedAt={run.resumedAt} />}
            {visibleInputs(def.inputs, linked, data.values).map((input) => (
              <InputRow
                key={input.name}
                nodeId={id}
                input={input}
                value={data.values[input.name]}
                values={data.values}
                linked={linked.has(input.name)}
                issues={issuesByInput.m.get(input.name) ?? noIssues}
                control={data.control?.[input.name]}
              />
            ))}
          </>
        ) : (
          <>
            <MissingSlots saved={data.slots} />
            <div className="sf-issue">Unknown node type “{data.type}” — not available on this server.</div>
          </>
        )}
        {issuesByInput.general.map((issue, i) => (
          <IssueLine key={i} className="sf-node-issue" message={issue.message}>
            {issue.traceback && (
              <details className="nodrag nowheel">
                <summary>traceback</summary>
                <pre>{issue.traceback}</pre>
              </details>
            )}
          </IssueLine>
        ))}
        {run.preview && (
          // one fixed box for every frame, kept after the run: the node does not change size
          <div className="sf-preview-box">
            <img className="sf-preview" alt={run.status === "executing" ? "live preview" : "last preview"} src={run.preview} />
          </div>
        )}
        {/* a finished training's last sample comes back as its output image (kept in the history) */}
        {run.sample && !(run.status !== "executing" && run.images?.length) && (
          <img
            className="sf-preview sf-sample"
            alt={run.sampleStep ? `sample at step ${run.sampleStep}` : "sample"}
            title="Sample drawn with the weights of this step"
            src={run.sample}
          />
        )}
        {run.images && run.images.length > 0 && !(run.compare && def?.inputs.some((i) => i.type === "IMAGECOMPARE")) && (
          <div className="sf-images">
            {run.images.map((img, i) => (
              <img
                key={`${img.subfolder ?? ""}/${img.filename}/${i}`}
                className="nodrag sf-output-image"
                alt={img.filename}
                src={viewUrl(img)}
                onClick={() => openImage(img, run.images)}
              />
            ))}
          </div>
        )}
        {run.text && run.text.length > 0 && <pre className="sf-text nodrag nowheel">{run.text.join("\n")}</pre>}
      </div>
    </div>
  );
}

export const SfNode = memo(SfNodeImpl);
