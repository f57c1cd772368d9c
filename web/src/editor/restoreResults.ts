/** Results survive a reload: the open graph's nodes get their newest outputs from /history. */

import { getHistory } from "../api";
import { outputsForGraph } from "../lib/history";
import type { GalleryItem, RunStore } from "../lib/runstore";

const HISTORY_ITEMS = 50;

export async function restoreResults(store: RunStore, nodes: { id: string; type: string }[]): Promise<void> {
  const entries = await getHistory(HISTORY_ITEMS); // newest first
  const gallery: GalleryItem[] = entries.flatMap((e) => Object.entries(e.outputs).flatMap(([node, o]) =>
    (o.images ?? []).map((img, i) => ({
      ...img, node, promptId: e.promptId, key: `${e.promptId}:${node}:${i}:${img.subfolder ?? ""}/${img.filename}`,
    }))));
  store.restoreResults(outputsForGraph(entries, nodes), gallery);
}
