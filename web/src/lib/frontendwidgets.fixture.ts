/** Test helpers: our server's schemas of the nodes with front-end widgets (fixtures/frontend_widgets.json). */
import info from "./fixtures/frontend_widgets.json";
import { type ApiPrompt, type Graph, graphToPrompt } from "./graph";
import { type Defs, defaultValues, type ObjectInfo, parseObjectInfo } from "./schema";

export { defaultValues };

export function widgetDefs(): Defs {
  return parseObjectInfo(structuredClone(info) as unknown as ObjectInfo);
}

/** The prompt of one node `n` of `type` with `values` (and `linked` fed from a node `src`). */
export function graphToPromptFor(type: string, values: Record<string, unknown>, linked?: string): ApiPrompt {
  const graph: Graph = {
    nodes: [{ id: "n", type, pos: [0, 0], values }],
    links: linked ? [{ source: "src", slot: 0, target: "n", input: linked }] : [],
    groups: [],
  };
  return graphToPrompt(graph, widgetDefs());
}
