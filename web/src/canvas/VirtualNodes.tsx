/**
 * The canvas-only nodes (lib/reroute.ts): a reroute, a dot passing one link
 * through with its source's type, and a note, free resizable text.
 */

import { Handle, NodeResizer, type NodeProps, Position, type ReactFlowState, useStore } from "@xyflow/react";
import { memo, useCallback } from "react";
import { REROUTE_INPUT, rerouteType } from "../lib/reroute";
import { typeColor } from "../lib/types";
import { useEditor } from "./context";
import { edgeToLink, inHandle, OUTPUT_HANDLE, outHandle, type SfNode as SfNodeType, type SfNodeData } from "./flow";
import { titleId, useNodeLabel } from "./nodeLabel";
import { SfNode } from "./SfNode";

function RerouteImpl({ id, selected }: NodeProps<SfNodeType>) {
  const { defs } = useEditor();
  // a string: the dot re-renders only when the type it carries changes
  const type = useStore(useCallback((s: ReactFlowState) => rerouteType({
    nodeType: (n) => (s.nodeLookup.get(n)?.data as SfNodeData | undefined)?.type,
    links: s.edges.map(edgeToLink),
  }, defs, id), [defs, id]));
  const color = typeColor(type);
  const label = useNodeLabel(id);
  return (
    <div ref={label} className={`sf-reroute${selected ? " selected" : ""}`} data-node-id={id} data-node-type="Reroute"
      data-type={type} data-tooltip={`Reroute: passes its link through (${type === "*" ? "not fed yet" : type})`}
      style={{ borderColor: color }}>
      <span className="sf-sr-only" id={titleId(id)}>Reroute</span>
      <Handle type="target" position={Position.Left} id={inHandle(REROUTE_INPUT)} className="sf-handle sf-reroute-handle"
        style={{ background: color, borderColor: color }} data-type={type} />
      <Handle type="source" position={Position.Right} id={outHandle(0)} className={`${OUTPUT_HANDLE} sf-reroute-handle`}
        style={{ background: color, borderColor: color }} data-type={type} />
    </div>
  );
}

function NoteImpl({ id, data, selected }: NodeProps<SfNodeType>) {
  const { setValue } = useEditor();
  const label = useNodeLabel(id);
  return (
    <div ref={label} className={`sf-note${selected ? " selected" : ""}`} data-node-id={id} data-node-type="Note"
      style={data.size ? { minHeight: data.size[1] } : undefined}>
      <NodeResizer isVisible={selected && !data.pinned} minWidth={140} minHeight={60}
        lineClassName="sf-resize-line" handleClassName="sf-resize-handle" />
      <div className="sf-header sf-drag" style={data.color ? { background: data.color } : undefined}>
        <span className="sf-title" id={titleId(id)}>{data.title ?? "Note"}</span>
        <span className="sf-id">#{id}</span>
      </div>
      <textarea
        className="nodrag nowheel sf-note-text"
        aria-label="note text"
        placeholder="Write a note… (saved with the workflow, never run)"
        value={typeof data.values.text === "string" ? data.values.text : ""}
        onChange={(e) => setValue(id, "text", e.target.value)}
      />
    </div>
  );
}

export const RerouteNode = memo(RerouteImpl);
export const NoteNode = memo(NoteImpl);

/** React Flow's node components by SfNode["type"]. */
export const nodeTypes = { sf: SfNode, reroute: RerouteNode, note: NoteNode };
