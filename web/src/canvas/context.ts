import { createContext, useContext, useSyncExternalStore } from "react";
import type { GlobalRun, ImageRef, NodeRun, RunStore } from "../lib/runstore";
import type { ControlMode, Defs } from "../lib/schema";

/** What node components need from the editor; the object is stable across renders. */
export type EditorApi = {
  defs: Defs;
  store: RunStore;
  setValue(nodeId: string, name: string, value: unknown): void;
  /** Several of a node's values at once (one edit): `update` gets its values, returns the new ones. */
  updateValues(nodeId: string, update: (values: Readonly<Record<string, unknown>>) => Record<string, unknown>): void;
  setTitle(nodeId: string, title: string | undefined): void;
  setControl(nodeId: string, name: string, mode: ControlMode): void;
  upload(nodeId: string, name: string, file: File): Promise<void>;
  /** Show `img` large; `set`: the images it is one of (the lightbox pages through them). */
  openImage(img: ImageRef, set?: readonly ImageRef[]): void;
  /** While on, edits make no undo step; the first edit after it goes off records them as one (a widget drag). */
  holdHistory(on: boolean): void;
  /** Open the help panel on a node (editor/NodeHelp.tsx). */
  showHelp(nodeId: string): void;
  /** A primitive linked into a widget input (a double-click on its dot, as in ComfyUI). */
  primitiveFor(nodeId: string, input: string): void;
};

export const EditorContext = createContext<EditorApi | null>(null);

export function useEditor(): EditorApi {
  const api = useContext(EditorContext);
  if (!api) throw new Error("EditorContext missing");
  return api;
}

/** This node's run state; re-renders only when this node's record changes. */
export function useNodeRun(store: RunStore, id: string): NodeRun {
  return useSyncExternalStore(store.subscribe, () => store.getNode(id));
}

export function useGlobalRun(store: RunStore): GlobalRun {
  return useSyncExternalStore(store.subscribe, store.getGlobal);
}
