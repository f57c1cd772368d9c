/**
 * A node's accessible name. React Flow's wrapper (role "group", focusable) takes its name
 * only from `node.ariaLabel`, which every place that makes a node would have to keep in step
 * with the title; instead the wrapper is pointed at the node's own title element.
 */
import { useCallback } from "react";

/** The id of node `id`'s title element (unique: one canvas per page). */
export function titleId(id: string): string {
  return `sf-node-title-${id}`;
}

/** A ref for a node's root element: its React Flow wrapper is labelled by the node's title. */
export function useNodeLabel(id: string): (el: HTMLElement | null) => void {
  return useCallback((el: HTMLElement | null) => {
    el?.closest(".react-flow__node")?.setAttribute("aria-labelledby", titleId(id));
  }, [id]);
}
