/**
 * Where a model is picked (Load Checkpoint's ckpt_name, Load ControlNet Model's
 * control_net_name): the picked built-in model's native size and what it can draw,
 * from the server's model cards (`/models/<folder>?info=1`, a JSON file; no weights
 * are opened). Models without a card show nothing.
 */

import { useEffect, useSyncExternalStore } from "react";
import { getModelCards, type ModelCard } from "../api";
import { nativeSizeText } from "../lib/examples";

/** The model-picking inputs and the models folder each lists. */
export const MODEL_FOLDERS: Record<string, string> = { ckpt_name: "checkpoints", control_net_name: "controlnet" };

// One fetch per folder for the whole page, shared by every node that shows a card.
const cards = new Map<string, Record<string, ModelCard>>();
const loading = new Set<string>();
const listeners = new Set<() => void>();
let version = 0;

function load(folder: string): void {
  if (cards.has(folder) || loading.has(folder)) return;
  loading.add(folder);
  getModelCards(folder)
    .catch(() => ({}))
    .then((c) => {
      cards.set(folder, c);
      loading.delete(folder);
      version++;
      for (const fn of listeners) fn();
    });
}

const subscribe = (fn: () => void) => {
  listeners.add(fn);
  return () => listeners.delete(fn);
};

/** The card of model `name` in `folder`, once the folder's cards have loaded (else undefined). */
export function cardOf(folder: string, name: unknown): ModelCard | undefined {
  return typeof name === "string" && name ? cards.get(folder)?.[name] : undefined;
}

export function ModelCardLine({ folder, name }: { folder: string; name: string }) {
  useSyncExternalStore(subscribe, () => version);
  useEffect(() => load(folder), [folder]);
  const card = name ? cards.get(folder)?.[name] : undefined;
  if (!card) return null;
  const size = nativeSizeText(card);
  // One line (the node keeps its height, so example layouts stay clear); all of it on hover.
  const full = [size && `Native size ${size}`, card.draws && `Draws: ${card.draws}`, card.notes,
    card.prompt_example && `e.g. "${card.prompt_example}"`].filter(Boolean).join("\n");
  return (
    <div className="sf-model-card" data-testid="model-card" title={full}>
      {size && <b>{size}</b>}{size && card.summary ? " · " : ""}{card.summary ?? card.draws}
    </div>
  );
}
