/**
 * Making links and adding nodes: type-checked connections (refused with their
 * reason), a link dropped on a node linked by type (as ComfyUI does), a link dropped
 * on empty space opening the palette filtered to nodes that fit it, and the palette's pick.
 */

import { type Connection, type Edge, type FinalConnectionState, type Handle, useReactFlow } from "@xyflow/react";
import { useCallback, useRef, useState } from "react";
import {
  edgeToLink, inHandle, inputOf, recolourReroutes, type SfEdge, type SfNode, slotOf, toFlowEdge, toFlowNode,
} from "../canvas/flow";
import { cardOf, MODEL_FOLDERS } from "../canvas/ModelCard";
import type { PaletteFilter } from "../canvas/Palette";
import { nativeSizeValues } from "../lib/examples";
import { createNode, type GraphLink, nextNodeId } from "../lib/graph";
import { downstreamTypes, NOTE, outputType, REROUTE, REROUTE_INPUT, rerouteType, splitLink } from "../lib/reroute";
import { estimateNodeHeight, freeSpot, NODE_WIDTH, type Rect, revealShift } from "../lib/layout";
import { ANY_TYPE, checkConnection, type GraphView, nodesAcceptingType, nodesProducingType, typesMatch } from "../lib/types";
import type { NodeDef } from "../lib/schema";
import { adoptWidget, PRIMITIVE_FOR, PRIMITIVE_TYPES } from "../lib/primitive";
import { dropInput, dropOutput } from "./linkDrop";
import type { Notify } from "./Toasts";
import type { GraphStore } from "./useGraphStore";

type PendingLink = { node: string; from: "source" | "target"; slot?: number; input?: string; type: string };

export type PaletteState = {
  screen?: { x: number; y: number };
  flow: { x: number; y: number };
  filter?: PaletteFilter;
  pending?: PendingLink;
  /** Toolbar's Add node: `flow` is the view's centre and the node goes to free space near it, inside `view`. */
  view?: Rect;
};

export const linkOf = (c: Connection | Edge): GraphLink => ({
  source: c.source, slot: slotOf(c.sourceHandle), target: c.target, input: inputOf(c.targetHandle),
});

export function useLinking(g: GraphStore, notify: Notify) {
  const rf = useReactFlow<SfNode, SfEdge>();
  const { state, defsRef, setNodes, setEdges, store, patchNode, occupied } = g;
  const [palette, setPalette] = useState<PaletteState | null>(null);

  const graphView = useCallback((): GraphView => ({
    nodeType: (id) => state.current.nodes.find((n) => n.id === id)?.data.type,
    nodeTitle: (id) => state.current.nodes.find((n) => n.id === id)?.data.title,
    links: state.current.edges.map(edgeToLink),
  }), [state]);

  /** A new edge, coloured by the type it carries (through reroutes). */
  const edgeOf = useCallback((link: GraphLink): SfEdge => {
    const view = graphView();
    return toFlowEdge(link, defsRef.current, view.nodeType(link.source), outputType(view, defsRef.current, link.source, link.slot));
  }, [graphView, defsRef]);

  /** After a link into a reroute, the links it feeds take the new type's colour. */
  const rerouted = useCallback((link: GraphLink, es: SfEdge[]): SfEdge[] => {
    const nodeType = graphView().nodeType;
    return nodeType(link.target) === REROUTE ? recolourReroutes(es, nodeType, defsRef.current) : es;
  }, [graphView, defsRef]);

  const isValidConnection = useCallback(
    (c: Connection | Edge) => checkConnection(graphView(), defsRef.current, linkOf(c)).ok,
    [graphView, defsRef],
  );

  /**
   * A primitive's first link into a widget takes that widget's value (and its control), as in
   * ComfyUI (inside the update: a node the palette has just added for this link is not in
   * `state` yet).
   */
  const adoptOnFirstLink = useCallback((link: GraphLink) => {
    const source = state.current.nodes.find((n) => n.id === link.source);
    const target = state.current.nodes.find((n) => n.id === link.target);
    const firstLink = !state.current.edges.some((e) => e.source === link.source);
    if (target && firstLink && (!source || PRIMITIVE_TYPES.has(source.data.type))) {
      patchNode(link.source, (n) => {
        const adopted = adoptWidget(n.data, target.data, link.input, true, defsRef.current);
        return adopted ? { ...n, data: { ...n.data, values: adopted.values, control: adopted.control } } : n;
      });
    }
  }, [state, defsRef, patchNode]);

  /** Add a link after checking it; it replaces the input's previous link. */
  const connect = useCallback((link: GraphLink): boolean => {
    const check = checkConnection(graphView(), defsRef.current, link);
    if (!check.ok) {
      notify(`Link refused: ${check.reason}`, "error");
      return false;
    }
    const edge = edgeOf(link);
    adoptOnFirstLink(link);
    setEdges((es) => rerouted(link, [
      ...es.filter((e) => !(e.target === link.target && e.targetHandle === inHandle(link.input))),
      edge,
    ]));
    store.clearInputErrors(link.target, link.input); // e.g. "required input … is missing"
    return true;
  }, [graphView, notify, edgeOf, rerouted, setEdges, store, adoptOnFirstLink]);

  const onConnect = useCallback((c: Connection) => {
    connect(linkOf(c));
  }, [connect]);

  /**
   * A link dropped on node `nodeId` away from its dots (`row`: the input row it was dropped
   * on, a widget or a socket's label): into that input if it takes the link's type, else the
   * node's first free matching input (linkDrop.ts); dragged from an input, from
   * the node's first matching output. Nothing matching: nothing happens (a picked-up link
   * stays where it was).
   */
  const dropOnNode = useCallback((nodeId: string, row: string | undefined, from: Handle, fromDef: NodeDef | undefined,
    held: SfEdge | undefined) => {
    const node = state.current.nodes.find((n) => n.id === nodeId);
    if (!node || node.data.type === NOTE) return;
    const view = graphView();
    const defs = defsRef.current;
    const def = defs.get(node.data.type);
    const isReroute = node.data.type === REROUTE;
    if (from.type === "source" || held) {
      const source = held ? held.source : from.nodeId;
      const slot = slotOf(held ? held.sourceHandle : from.id);
      if (source === nodeId) return; // let go over its own node: nothing meant
      const type = (held || !fromDef ? outputType(view, defs, source, slot) : fromDef.outputs[slot]?.type) ?? ANY_TYPE;
      const linked = new Set(state.current.edges.filter((e) => e.target === nodeId).map((e) => inputOf(e.targetHandle)));
      const input = isReroute ? REROUTE_INPUT : def ? dropInput(def, node.data.values, linked, type, row) : undefined;
      if (input === undefined) {
        // as a drop on a dot that refuses the link says why (this one did nothing)
        if (def) notify(`Link refused: ${view.nodeTitle?.(nodeId) ?? def.displayName} has no input that takes ${type}`, "error");
        return;
      }
      if (held && held.target === nodeId && inputOf(held.targetHandle) === input) return; // put back where it was
      if (connect({ source, slot, target: nodeId, input }) && held) setEdges((es) => es.filter((e) => e.id !== held.id));
      return;
    }
    if (from.nodeId === nodeId) return;
    const input = inputOf(from.id);
    const type = fromDef
      ? fromDef.inputs.find((i) => i.name === input)?.type ?? ANY_TYPE
      : downstreamTypes(view, defs, from.nodeId)[0] ?? ANY_TYPE;
    const slot = isReroute ? 0 : def ? dropOutput(def, type) : undefined;
    if (slot !== undefined) connect({ source: nodeId, slot, target: from.nodeId, input });
    else if (def) notify(`Link refused: ${view.nodeTitle?.(nodeId) ?? def.displayName} has no ${type} output`, "error");
  }, [state, graphView, defsRef, connect, setEdges, notify]);

  /**
   * Shift-drag from an output onto another node's output (or its body: its first output of
   * the same type) moves all of that output's links there, as in ComfyUI.
   */
  const moveOutputLinks = useCallback((source: string, slot: number, element: Element) => {
    const nodeId = element.closest(".react-flow__node")?.getAttribute("data-id");
    if (!nodeId || nodeId === source) return;
    const view = graphView();
    const defs = defsRef.current;
    const type = outputType(view, defs, source, slot) ?? ANY_TYPE;
    const handle = element.closest(".react-flow__handle.source")?.getAttribute("data-handleid");
    const node = state.current.nodes.find((n) => n.id === nodeId);
    const outputs = node?.data.type === REROUTE ? [{ type }] : defs.get(node?.data.type ?? "")?.outputs ?? [];
    const to = handle ? slotOf(handle) : outputs.findIndex((o) => typesMatch(o.type, type) && typesMatch(type, o.type));
    if (!(to >= 0)) {
      notify(`Links not moved: ${view.nodeTitle?.(nodeId) ?? nodeId} has no ${type} output`, "error");
      return;
    }
    const moving = state.current.edges.filter((e) => e.source === source && slotOf(e.sourceHandle) === slot);
    if (!moving.length) notify("Shift-drag moves an output's links: this output has none", "info");
    // each link replaces the input's old one, so nothing is left behind on the old output
    for (const e of moving) connect({ source: nodeId, slot: to, target: e.target, input: inputOf(e.targetHandle) });
  }, [graphView, defsRef, state, notify, connect]);

  const onConnectEnd = useCallback((event: MouseEvent | TouchEvent, cs: FinalConnectionState) => {
    if (cs.isValid || !cs.fromHandle || !cs.fromNode) return;
    if (cs.fromHandle.type === "source" && cs.toHandle?.type !== "target" && !("changedTouches" in event) && event.shiftKey) {
      const under = document.elementFromPoint(event.clientX, event.clientY);
      if (under) moveOutputLinks(cs.fromHandle.nodeId, slotOf(cs.fromHandle.id), under);
      return;
    }
    const from = cs.fromHandle;
    const fromType = (cs.fromNode.data as SfNode["data"]).type;
    const fromDef = defsRef.current.get(fromType);
    // A drag from a linked input's dot picks up its link, as in ComfyUI: dropped on another
    // input it moves there (on a node's body, to its matching input), dropped on empty space
    // it is detached (and the palette offers nodes to feed the input).
    const held = from.type === "target"
      ? state.current.edges.find((e) => e.target === from.nodeId && e.targetHandle === from.id)
      : undefined;
    if (cs.toHandle) {
      // Dropped on a handle that refused the link: say why.
      const to = cs.toHandle;
      if (to.type === from.type) {
        if (held && to.type === "target") {
          if (to.nodeId === from.nodeId && to.id === from.id) return; // put back where it was
          const moved = { source: held.source, slot: slotOf(held.sourceHandle), target: to.nodeId, input: inputOf(to.id) };
          if (connect(moved)) setEdges((es) => es.filter((e) => e.id !== held.id));
          return;
        }
        notify(`Link refused: connect an output to an input`, "error");
        return;
      }
      const src = from.type === "source" ? from : to;
      const dst = from.type === "source" ? to : from;
      const check = checkConnection(graphView(), defsRef.current, {
        source: src.nodeId, slot: slotOf(src.id), target: dst.nodeId, input: inputOf(dst.id),
      });
      notify(`Link refused: ${check.ok ? "not allowed" : check.reason}`, "error");
      return;
    }
    if (!fromDef && fromType !== REROUTE) return;
    const point = "changedTouches" in event ? event.changedTouches[0] : event;
    const target = document.elementFromPoint(point.clientX, point.clientY);
    if (!target?.closest(".react-flow__pane")) return;
    // on a node, not on one of its dots: linked by type as in ComfyUI, never the palette
    // (whose first pick was another copy of that node)
    const onNode = target.closest(".react-flow__node")?.getAttribute("data-id");
    if (onNode) {
      const row = target.closest(".sf-input[data-input]")?.getAttribute("data-input") ?? undefined;
      dropOnNode(onNode, row, from, fromDef, held);
      return;
    }
    if (held) setEdges((es) => es.filter((e) => e.id !== held.id));
    const flow = rf.screenToFlowPosition({ x: point.clientX, y: point.clientY });
    let pending: PendingLink;
    let types: Map<string, string>;
    let last: Set<string> | undefined;
    let first: Set<string> | undefined;
    if (from.type === "source") {
      const slot = slotOf(from.id);
      const type = fromDef ? fromDef.outputs[slot]?.type ?? "*" : rerouteType(graphView(), defsRef.current, from.nodeId);
      pending = { node: from.nodeId, from: "source", slot, type };
      const fits = nodesAcceptingType(defsRef.current, type);
      types = new Map(fits.map((c) => [c.type, c.input!]));
      last = new Set(fits.filter((c) => c.choice).map((c) => c.type)); // a STRING into a sampler name: last
      types.set(REROUTE, REROUTE_INPUT); // a reroute carries any type
    } else {
      const input = inputOf(from.id);
      const type = fromDef
        ? fromDef.inputs.find((i) => i.name === input)?.type ?? "*"
        : downstreamTypes(graphView(), defsRef.current, from.nodeId)[0] ?? "*";
      pending = { node: from.nodeId, from: "target", input, type };
      const producers = nodesProducingType(defsRef.current, type);
      types = new Map(producers.map((c) => {
        const d = defsRef.current.get(c.type)!;
        return [c.type, d.outputs[c.slot!].name];
      }));
      const widget = !!fromDef?.inputs.find((i) => i.name === input)?.widget;
      first = new Set(producers.filter((c) => {
        const d = defsRef.current.get(c.type)!;
        // from a widget (a seed, a cfg, a prompt), the primitive that holds such a value, as
        // a ComfyUI user expects (Get Image Size came first); else the sources: what makes
        // the type without taking it by a link (Empty Latent Image, not Sample)
        return widget ? PRIMITIVE_TYPES.has(c.type)
          : !d.inputs.some((i) => i.required && i.type === type && !i.widget);
      }).map((c) => c.type));
      types.set(REROUTE, type);
    }
    setPalette({
      screen: { x: point.clientX, y: point.clientY },
      flow,
      pending,
      filter: { label: `${pending.from === "source" ? "an output" : "an input"} of type ${pending.type}`, types, last, first },
    });
  }, [graphView, notify, rf, defsRef, state, connect, setEdges, dropOnNode, moveOutputLinks]);

  // Dragging a link's end off an input moves it (dropped on another input) or detaches it
  // (dropped anywhere else), as in ComfyUI.
  const reconnected = useRef(false);
  const onReconnectStart = useCallback(() => {
    reconnected.current = false;
  }, []);
  const onReconnect = useCallback((old: SfEdge, c: Connection) => {
    reconnected.current = true;
    const link = linkOf(c);
    const check = checkConnection(graphView(), defsRef.current, link);
    if (!check.ok) {
      notify(`Link refused: ${check.reason}`, "error");
      return;
    }
    const edge = edgeOf(link);
    adoptOnFirstLink(link);
    setEdges((es) => rerouted(link, [
      ...es.filter((e) => e.id !== old.id && !(e.target === link.target && e.targetHandle === inHandle(link.input))),
      edge,
    ]));
  }, [graphView, notify, edgeOf, rerouted, setEdges, adoptOnFirstLink]);
  const onReconnectEnd = useCallback((_e: MouseEvent | TouchEvent, edge: SfEdge) => {
    if (!reconnected.current) setEdges((es) => es.filter((e) => e.id !== edge.id));
    reconnected.current = false;
  }, [setEdges]);

  /** Add a node of `type` at `pos` (flow coordinates), selected alone. */
  const addNode = useCallback((type: string, pos: { x: number; y: number }): string => {
    const id = nextNodeId(state.current.nodes.map((n) => n.id));
    const made = createNode(defsRef.current, type, id, [pos.x, pos.y]);
    const def = defsRef.current.get(type);
    const picked = state.current.nodes.flatMap((n) => Object.entries(MODEL_FOLDERS)
      .map(([input, folder]) => cardOf(folder, n.data.values?.[input])));
    const fit = nativeSizeValues(def, picked);
    if (fit && (made.values.width !== fit.width || made.values.height !== fit.height)) {
      made.values = { ...made.values, ...fit };
      notify(`${def?.displayName ?? type}: ${fit.width}×${fit.height}, the native size of the graph's model`, "info");
    }
    const node = toFlowNode(made);
    node.selected = true;
    const next = [...state.current.nodes.map((n) => (n.selected ? { ...n, selected: false } : n)), node];
    state.current = { ...state.current, nodes: next };
    setNodes(next);
    return id;
  }, [state, defsRef, setNodes, notify]);

  /** The visible part of the canvas, in flow coordinates. */
  const visibleRect = useCallback((): Rect | undefined => {
    const rect = document.querySelector(".react-flow")?.getBoundingClientRect();
    if (!rect) return undefined;
    const a = rf.screenToFlowPosition({ x: rect.left, y: rect.top });
    const b = rf.screenToFlowPosition({ x: rect.right, y: rect.bottom });
    return { x: a.x, y: a.y, width: b.x - a.x, height: b.y - a.y };
  }, [rf]);

  /** The minimap and the zoom controls drawn over the canvas, in flow coordinates. */
  const overlayRects = useCallback((): Rect[] => {
    const out: Rect[] = [];
    for (const el of document.querySelectorAll(".react-flow__minimap, .react-flow__controls")) {
      const r = el.getBoundingClientRect();
      if (!r.width || !r.height) continue; // hidden (a narrow window has no minimap)
      const a = rf.screenToFlowPosition({ x: r.left, y: r.top });
      const b = rf.screenToFlowPosition({ x: r.right, y: r.bottom });
      out.push({ x: a.x, y: a.y, width: b.x - a.x, height: b.y - a.y });
    }
    return out;
  }, [rf]);

  // a new node's size before it is measured: the CSS width, and the height its rows will have
  const sizeOf = useCallback((type: string) => (
    { width: NODE_WIDTH, height: estimateNodeHeight(defsRef.current.get(type)) }), [defsRef]);

  /**
   * Top-left of a new node of `type` overlapping no node (lib/layout.ts's freeSpot): centred
   * on `at`, or (`corner`) with its top-left corner at `at`, or as near to that as is free.
   */
  const freePosition = useCallback((type: string, at: { x: number; y: number }, view?: Rect, corner = false) => {
    const size = sizeOf(type);
    const taken = [
      ...state.current.nodes.map(occupied), // clear of a sampler's coming preview too
      ...overlayRects(), // not under the minimap or the zoom buttons
    ];
    const want = corner ? at : { x: at.x - size.width / 2, y: at.y - size.height / 2 };
    return freeSpot(taken, want, size, view);
  }, [state, occupied, sizeOf, overlayRects]);

  /** Move the view so a node just added at `pos` is seen whole (a full view put it outside). */
  const reveal = useCallback((type: string, pos: { x: number; y: number }, view?: Rect) => {
    if (!view) return;
    const shift = revealShift({ ...pos, ...sizeOf(type) }, view);
    if (!shift.x && !shift.y) return;
    const vp = rf.getViewport();
    void rf.setViewport({ x: vp.x - shift.x * vp.zoom, y: vp.y - shift.y * vp.zoom, zoom: vp.zoom },
      { duration: 200 });
  }, [rf, sizeOf]);

  /** Add a node at `pos` (placed by freePosition in `view`) and show it. */
  const addShown = useCallback((type: string, pos: { x: number; y: number }, view?: Rect): string => {
    const id = addNode(type, pos);
    reveal(type, pos, view);
    return id;
  }, [addNode, reveal]);

  /**
   * Add a node where the user pointed (a double-click, a dropped link, the canvas menu): its
   * top-left there, or moved to the nearest free space in view when it would cover a node.
   */
  const addNodeAt = useCallback((type: string, pos: { x: number; y: number }): string => {
    const view = visibleRect();
    return addShown(type, freePosition(type, pos, view, true), view);
  }, [addShown, freePosition, visibleRect]);

  const pick = useCallback((type: string) => {
    const p = palette;
    setPalette(null);
    if (!p) return;
    const id = p.view ? addShown(type, freePosition(type, p.flow, p.view), p.view) : addNodeAt(type, p.flow);
    const pending = p.pending;
    if (!pending) return;
    if (type === REROUTE) {
      if (pending.from === "source") connect({ source: pending.node, slot: pending.slot!, target: id, input: REROUTE_INPUT });
      else connect({ source: id, slot: 0, target: pending.node, input: pending.input! });
      return;
    }
    const def = defsRef.current.get(type);
    if (!def) return;
    if (pending.from === "source") {
      const input = p.filter?.types.get(type);
      if (input) connect({ source: pending.node, slot: pending.slot!, target: id, input });
    } else {
      const slot = nodesProducingType(new Map([[type, def]]), pending.type)[0]?.slot;
      if (slot !== undefined) connect({ source: id, slot, target: pending.node, input: pending.input! });
    }
  }, [palette, addShown, addNodeAt, connect, defsRef, freePosition]);

  /**
   * A double-click on a widget input's dot, as in ComfyUI: a primitive holding the widget's
   * value, placed to the node's left and linked into that input. False when the input has
   * no primitive of its kind (a list of choices) or is linked already.
   */
  const primitiveFor = useCallback((nodeId: string, input: string): boolean => {
    const node = state.current.nodes.find((n) => n.id === nodeId);
    const spec = node && defsRef.current.get(node.data.type)?.inputs.find((i) => i.name === input);
    if (!node || !spec?.widget || state.current.edges.some((e) => e.target === nodeId && e.targetHandle === inHandle(input))) {
      return false;
    }
    const type = PRIMITIVE_FOR[spec.type] ?? (spec.type === "STRING"
      ? (spec.options.multiline ? "PrimitiveStringMultiline" : "PrimitiveString") : undefined);
    if (!type || !defsRef.current.has(type)) {
      notify(`${input} takes one of a list of choices: no primitive holds those`, "info");
      return false;
    }
    const id = addNodeAt(type, { x: node.position.x - NODE_WIDTH - 60, y: node.position.y });
    connect({ source: id, slot: 0, target: nodeId, input });
    return true;
  }, [state, defsRef, addNodeAt, connect, notify]);

  /** Put a new reroute on a link (an edge of the canvas) at `pos`, in flow coordinates. */
  const insertReroute = useCallback((edgeId: string, pos: { x: number; y: number }) => {
    const edge = state.current.edges.find((e) => e.id === edgeId);
    if (!edge) return;
    const link = edgeToLink(edge);
    // the dot's centre on the point (a reroute is 16 px across)
    const id = addNode(REROUTE, { x: pos.x - 8, y: pos.y - 8 });
    const links = splitLink(state.current.edges.map(edgeToLink), link, id);
    const view = { nodeType: (n: string) => state.current.nodes.find((x) => x.id === n)?.data.type, links };
    setEdges((es) => [
      ...es.filter((e) => e.id !== edgeId),
      ...links.slice(-2).map((l) => toFlowEdge(l, defsRef.current, view.nodeType(l.source),
        outputType(view, defsRef.current, l.source, l.slot))),
    ]);
  }, [state, addNode, setEdges, defsRef]);

  /**
   * The toolbar's Add node: the node goes into free space in view, near the view's centre
   * (not at the last pointer position, which is often on another node).
   */
  const openPaletteCentered = useCallback(() => {
    const view = visibleRect();
    const centre = view
      ? { x: view.x + view.width / 2, y: view.y + view.height / 2 }
      : rf.screenToFlowPosition({ x: window.innerWidth / 2, y: window.innerHeight / 2 });
    setPalette({ flow: centre, view });
  }, [rf, visibleRect]);

  return {
    palette, setPalette, isValidConnection, connect, onConnect, onConnectEnd, onReconnectStart, onReconnect,
    onReconnectEnd, addNode, addNodeAt, pick, openPaletteCentered, insertReroute, freePosition, primitiveFor,
  };
}
