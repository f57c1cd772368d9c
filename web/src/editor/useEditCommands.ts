/** Edits on the selection: copy, paste, select all, mute / bypass, pin / collapse, clone, remove. */

import { useCallback, useRef } from "react";
import { graphToFlow } from "../canvas/flow";
import { pastedInputs } from "../lib/clipboard";
import { type GraphLink, type GraphNode, type NodeMode, pasteNodes } from "../lib/graph";
import { estimateNodeHeight, NODE_HEIGHT, NODE_WIDTH, pasteOffset } from "../lib/layout";
import type { Notify } from "./Toasts";
import type { GraphStore } from "./useGraphStore";

const CLIPBOARD_KEY = "steerflow.clipboard";

/** A node's canvas-only on/off look that a key toggles. */
export type NodeFlag = "pinned" | "collapsed";

type FlagNode = { id: string; selected?: boolean; draggable?: boolean; data: { pinned?: boolean; collapsed?: boolean } };

/**
 * `flag` toggled on the chosen nodes (`ids`, default: the selected ones): when every one
 * of them already has it, it goes from all of them, else all of them get it (ComfyUI's
 * toggle on a mixed selection). A pinned node cannot be dragged. No node chosen: `ns` as it is.
 */
export function toggledFlag<N extends FlagNode>(ns: N[], flag: NodeFlag, ids?: ReadonlySet<string>): N[] {
  const on = (n: N) => (ids ? ids.has(n.id) : !!n.selected);
  const chosen = ns.filter(on);
  if (!chosen.length) return ns;
  const set = !chosen.every((n) => n.data[flag]);
  return ns.map((n) => {
    if (!on(n)) return n;
    const data = { ...n.data };
    if (set) data[flag] = true;
    else delete data[flag];
    return flag === "pinned" ? { ...n, data, draggable: !set } : { ...n, data };
  });
}

type Clip = { nodes: GraphNode[]; links: GraphLink[]; inputs?: GraphLink[]; sources?: Record<string, string> };

export function useEditCommands(g: GraphStore, notify: Notify, mouse: { current: { x: number; y: number } | null }) {
  const { state, currentGraph, defsRef, setNodes, setEdges, occupied } = g;

  /** The given nodes (default: the selection) and their links. */
  const clipOf = useCallback((ids?: Set<string>): Clip | null => {
    const graph = currentGraph();
    const sel = ids ?? new Set(state.current.nodes.filter((n) => n.selected).map((n) => n.id));
    if (!sel.size) return null;
    // links from outside into the copied nodes (Ctrl+Shift+V keeps them), and what their
    // sources were (a paste into another graph finds other nodes under those ids)
    const inputs = graph.links.filter((l) => !sel.has(l.source) && sel.has(l.target));
    const types = new Map(graph.nodes.map((n) => [n.id, n.type]));
    return {
      nodes: graph.nodes.filter((n) => sel.has(n.id)),
      links: graph.links.filter((l) => sel.has(l.source) && sel.has(l.target)),
      inputs,
      sources: Object.fromEntries(inputs.map((l) => [l.source, types.get(l.source) ?? ""])),
    };
  }, [currentGraph, state]);

  /**
   * Put `clip` into the graph with its top-left at `at` (default: under the mouse), or at the
   * nearest free space from there when it would cover a node (lib/layout.ts pasteOffset, the
   * rule of a node added by double-click), selecting the new nodes.
   */
  const insertClip = useCallback((clip: Clip, withInputs: boolean, at?: { x: number; y: number }) => {
    const minX = Math.min(...clip.nodes.map((n) => n.pos[0]));
    const minY = Math.min(...clip.nodes.map((n) => n.pos[1]));
    const to = at ?? mouse.current ?? { x: minX + 40, y: minY + 40 };
    const rectOf = (n: { position: { x: number; y: number }; measured?: { width?: number; height?: number }; width?: number }) => ({
      x: n.position.x, y: n.position.y,
      width: n.measured?.width ?? n.width ?? NODE_WIDTH, height: n.measured?.height ?? NODE_HEIGHT,
    });
    const byIdNow = new Map(state.current.nodes.map((n) => [n.id, n]));
    // the copied nodes' boxes: their size on the canvas if they are still there, else as a new node's
    const clipRects = clip.nodes.map((n) => {
      const on = byIdNow.get(n.id);
      const size = on?.data.type === n.type ? rectOf(on) : {
        width: n.size?.[0] ?? NODE_WIDTH, height: Math.max(n.size?.[1] ?? 0, estimateNodeHeight(defsRef.current.get(n.type))),
      };
      return { x: n.pos[0], y: n.pos[1], width: size.width, height: size.height };
    });
    const d = pasteOffset(clipRects, state.current.nodes.map(occupied), { x: to.x, y: to.y });
    const offset: [number, number] = [d.x, d.y];
    const graph = currentGraph();
    const { graph: next, ids } = pasteNodes(graph, clip, offset);
    if (withInputs && clip.inputs?.length) {
      const idMap = new Map(clip.nodes.map((n, i) => [n.id, ids[i]]));
      const { kept, dropped } = pastedInputs(next, clip.inputs, clip.sources, idMap, defsRef.current);
      next.links.push(...kept);
      if (dropped) {
        notify(`${dropped} input link${dropped === 1 ? "" : "s"} not kept: ${dropped === 1 ? "its source is" : "their sources are"} ` +
          "not in this graph, or would not fit", "info");
      }
    }
    const selected = new Set(ids);
    const flow = graphToFlow(next, defsRef.current);
    // keep the existing nodes' objects (measured sizes) and select the pasted ones
    const byId = new Map(state.current.nodes.map((n) => [n.id, n]));
    setNodes(flow.nodes.map((n) => (byId.has(n.id) ? { ...byId.get(n.id)!, selected: false } : { ...n, selected: selected.has(n.id) })));
    setEdges(flow.edges);
    return ids;
  }, [currentGraph, defsRef, mouse, notify, occupied, setEdges, setNodes, state]);

  /** The nodes the Ctrl+C being handled copied: the `copy` event after it puts them on the system clipboard too. */
  const justCopied = useRef<Clip | null>(null);
  const copy = useCallback(() => {
    const clip = clipOf();
    if (!clip) return;
    localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(clip));
    justCopied.current = clip;
    setTimeout(() => (justCopied.current = null)); // the copy event comes in the same task as the key
    notify(`Copied ${clip.nodes.length} node${clip.nodes.length === 1 ? "" : "s"}`);
  }, [clipOf, notify]);
  /** The nodes the key press just copied, taken once (null: the copy was not ours, e.g. a label's text). */
  const takeCopied = useCallback((): Clip | null => {
    const clip = justCopied.current;
    justCopied.current = null;
    return clip;
  }, []);

  /** Paste nodes copied on the canvas that came back through the system clipboard. */
  const pasteClip = useCallback((clip: unknown) => {
    const c = clip as Clip | null;
    if (!c || !Array.isArray(c.nodes) || !c.nodes.length || !Array.isArray(c.links)) return;
    insertClip(c, false);
  }, [insertClip]);

  /** Paste the copied nodes; `withInputs` (Ctrl+Shift+V) also keeps the links into them. */
  const paste = useCallback((withInputs = false) => {
    const raw = localStorage.getItem(CLIPBOARD_KEY);
    if (!raw) return;
    let clip: Clip;
    try {
      clip = JSON.parse(raw);
    } catch {
      return;
    }
    if (!clip.nodes?.length) return;
    insertClip(clip, withInputs);
  }, [insertClip]);

  /** A copy of one node beside it, with its input links. */
  const clone = useCallback((id: string) => {
    const clip = clipOf(new Set([id]));
    if (!clip) return;
    const [x, y] = clip.nodes[0].pos;
    insertClip(clip, true, { x: x + 30, y: y + 30 });
  }, [clipOf, insertClip]);

  const remove = useCallback((ids: Set<string>) => {
    setNodes((ns) => ns.filter((n) => !ids.has(n.id)));
    setEdges((es) => es.filter((e) => !ids.has(e.source) && !ids.has(e.target)));
  }, [setEdges, setNodes]);

  const selectAll = useCallback(() => setNodes((ns) => ns.map((n) => ({ ...n, selected: true }))), [setNodes]);

  /** Mute or bypass nodes (default: the selection); on nodes already in that mode, make them run again. */
  const toggleMode = useCallback((mode: NodeMode, ids?: Set<string>) => {
    setNodes((ns) => {
      const on = (n: (typeof ns)[number]) => (ids ? ids.has(n.id) : !!n.selected);
      const chosen = ns.filter(on);
      const off = chosen.length > 0 && chosen.every((n) => n.data.mode === mode);
      return ns.map((n) => {
        if (!on(n)) return n;
        const data = { ...n.data };
        if (off) delete data.mode;
        else data.mode = mode;
        return { ...n, data };
      });
    });
  }, [setNodes]);

  /** Pin or collapse nodes (default: the selection), as ComfyUI's P and Alt+C. */
  const toggleFlag = useCallback((flag: NodeFlag, ids?: Set<string>) => {
    setNodes((ns) => toggledFlag(ns, flag, ids));
  }, [setNodes]);

  /** Remove one link (a link that has the keyboard focus, on Delete). */
  const removeLink = useCallback((id: string) => setEdges((es) => es.filter((e) => e.id !== id)), [setEdges]);

  return { copy, takeCopied, paste, pasteClip, clone, remove, selectAll, toggleMode, toggleFlag, removeLink };
}
