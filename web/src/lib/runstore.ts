/**
 * Run state (executing node, progress, previews, outputs, errors) lives here,
 * outside the React Flow node array: a tiny external store read with
 * useSyncExternalStore, one immutable record per node, so a progress tick
 * re-renders only the node it concerns. Websocket messages are queued and
 * applied once per animation frame.
 *
 * Training nodes add two things: progress events carrying a `loss` build the node's
 * loss curve (the last LOSS_POINTS_MAX steps), and a preview image that arrives while
 * such a node runs is its sample image (drawn with the weights of that step). Both
 * stay on the node after it finishes, with its result, until it runs again.
 */

import { type ComparePair, comparePair } from "./imagecompare";

export type ImageRef = { filename: string; subfolder?: string; type?: string };

export type NodeIssue = {
  message: string;
  /** The input the issue is about, when known (shown on that input's row). */
  input?: string;
  kind?: string;
  details?: string;
  traceback?: string;
};

/** One training step's loss (`step` is the progress value: 1-based, counts resumed steps). */
export type LossPoint = { step: number; loss: number };

export type NodeRun = {
  status?: "queued" | "executing" | "cached" | "done" | "error";
  progress?: { value: number; max: number };
  preview?: string;
  /** A training node's loss per step, oldest first (at most LOSS_POINTS_MAX); kept across a resume. */
  losses?: LossPoint[];
  /** Steps where a resumed training went on (the curve is continued there, and marked). */
  resumedAt?: number[];
  /**
   * The prompt that added the curve's last point (a later prompt adding more is a resume);
   * absent when that prompt is unknown (e.g. a step that came before a reloaded page took
   * its running prompt back): never counted as another prompt.
   */
  lossRun?: string;
  /** A training node's latest sample image (an object URL), kept after it finishes. */
  sample?: string;
  /** The step whose weights drew `sample` (the last loss reported before it came). */
  sampleStep?: number;
  images?: ImageRef[];
  /** Image Compare's two sets (`a_images`, `b_images`), for its before/after slider. */
  compare?: ComparePair;
  text?: string[];
  errors?: NodeIssue[];
};

export type GalleryItem = ImageRef & { promptId?: string; node: string; key: string };

export type GlobalRun = {
  connected: boolean;
  running: boolean;
  promptId: string | null;
  executing: string | null;
  queueRemaining: number;
  preview: string | null;
  gallery: GalleryItem[];
  lastError: string | null;
  /**
   * The last run of the open graph that failed (a live `execution_error`): the node it failed
   * at and the message; `seq` counts failures, so the same message twice is two failures.
   */
  failure: { node: string | null; message: string; seq: number } | null;
  /**
   * The last rejected Queue in one line while the issues it named are still marked on the
   * nodes (the status bar and its toast follow it as they are fixed); null once none is left,
   * the graph is queued again, or another graph is open.
   */
  rejection: string | null;
  /** The last `node_warning` of the running or last prompt (a run that went on anyway). */
  lastWarning: string | null;
  /** Bumped whenever the queue or history may have changed (panels refetch). */
  queueVersion: number;
  /** When the running prompt started (ms since the epoch, this page's clock), or null. */
  startedAt: number | null;
  /** Nodes of the running prompt finished so far, cached ones included. */
  nodesDone: number;
  /**
   * The running prompt was taken back midway (a reloaded page, from the server's queue or its
   * replayed `executing`): the nodes it finished before, and when it started, are unknown.
   */
  joinedMidway: boolean;
  /**
   * The prompt this page thought was running when the connection to the server was lost
   * (its state is unknown until the connection is back: `resync` reads the server's queue).
   */
  lostPrompt: string | null;
  /**
   * The running (or last) prompt was queued from the open graph, so its run state is drawn on
   * the graph's nodes. False for a prompt of a graph opened before (node ids repeat across
   * graphs): it shows only in the queue, the live preview, History and the gallery.
   */
  ofGraph: boolean;
  /** The executing node's step out of its total (whatever graph it runs), or null. */
  progress: { value: number; max: number } | null;
};

/** What the server's queue and history say after a reconnect (api.ts getQueue / getHistory). */
export type ServerState = {
  running: { promptId: string; number: number }[];
  pending: { promptId: string; number: number }[];
  history: { promptId: string; number: number; status: string }[];
};

/** What became of the prompt lost with the connection (resync's answer). */
export type Resynced =
  | { kind: "rerunning" | "requeued"; promptId: string; number: number; text: string }
  | { kind: "finished" | "gone"; promptId: string; number?: number; text: string };

export type WsMessage = { type: string; data?: Record<string, unknown> };

export type NodeErrors = Record<string, {
  errors?: { type?: string; message?: string; details?: string; extra_info?: { input_name?: string | null } }[];
  class_type?: string;
}>;

const EMPTY: NodeRun = Object.freeze({}) as NodeRun;
export const GALLERY_MAX = 200;
/** The loss curve keeps this many most recent steps (memory and drawing stay bounded). */
export const LOSS_POINTS_MAX = 500;
/** At most this many prompts of the open graph are remembered (auto-queue can make many). */
export const GRAPH_PROMPTS_MAX = 1000;

type Scheduler = (flush: () => void) => void;

const defaultScheduler: Scheduler = (flush) => {
  if (typeof requestAnimationFrame === "function" && typeof document !== "undefined" && !document.hidden) {
    requestAnimationFrame(flush);
  } else {
    setTimeout(flush, 16);
  }
};

export class RunStore {
  private nodes = new Map<string, NodeRun>();
  private global: GlobalRun = {
    connected: false, running: false, promptId: null, executing: null, queueRemaining: 0,
    preview: null, gallery: [], lastError: null, failure: null, rejection: null, lastWarning: null, queueVersion: 0,
    startedAt: null, nodesDone: 0, joinedMidway: false, lostPrompt: null, ofGraph: true, progress: null,
  };
  /**
   * The prompts queued from the open graph (claimPrompt), oldest first. Only their run
   * messages are drawn on the nodes; opening another graph (reset) forgets them.
   */
  private graphPrompts = new Set<string>();
  private listeners = new Set<() => void>();
  private pending: (WsMessage | { type: "__preview"; url: string })[] = [];
  private scheduled = false;
  private revoke: (url: string) => void;
  /** Object URLs held as nodes' sample images: never revoked as a passing preview. */
  private kept = new Set<string>();
  /** The status bar's error when it says the server could not be reached (setLastError's `offline`). */
  private offlineError: string | null = null;
  /** Says the rejection again from the issues still marked (setRejection); null: nothing to say. */
  private describeRejection: ((marked: NodeErrors) => string | null) | null = null;

  constructor(private schedule: Scheduler = defaultScheduler,
    revoke: (url: string) => void = (u) => URL.revokeObjectURL(u)) {
    this.revoke = revoke;
  }

  subscribe = (fn: () => void): (() => void) => {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  };

  getNode = (id: string): NodeRun => this.nodes.get(id) ?? EMPTY;
  getGlobal = (): GlobalRun => this.global;

  private notify(): void {
    for (const fn of this.listeners) fn();
  }

  private patchNode(id: string, patch: Partial<NodeRun>): void {
    this.nodes.set(id, { ...(this.nodes.get(id) ?? {}), ...patch });
  }

  private patchGlobal(patch: Partial<GlobalRun>): void {
    this.global = { ...this.global, ...patch };
  }

  /**
   * Whether prompt `id` was queued from the open graph, so that its run state belongs on its
   * nodes. An unknown prompt (null: no prompt id, e.g. a server that sends none) is drawn.
   */
  private mine(id: string | null | undefined): boolean {
    return id == null || this.graphPrompts.has(id);
  }

  /** The prompt a message is about: its own prompt_id, else the running one. */
  private promptOf(d: Record<string, unknown>): string | null {
    return typeof d.prompt_id === "string" && d.prompt_id ? d.prompt_id : this.global.promptId;
  }

  /**
   * Prompt `id` is queued from the open graph (before it is posted, so that no run message of
   * it comes first): its run state is drawn on the graph's nodes.
   */
  claimPrompt(id: string): void {
    this.graphPrompts.delete(id);
    this.graphPrompts.add(id);
    for (const old of this.graphPrompts) {
      if (this.graphPrompts.size <= GRAPH_PROMPTS_MAX) break;
      this.graphPrompts.delete(old);
    }
    if (id === this.global.promptId && !this.global.ofGraph) {
      this.patchGlobal({ ofGraph: true });
      this.notify();
    }
  }

  /** Prompt `id` was not queued after all (the server refused it). */
  unclaimPrompt(id: string): void {
    this.graphPrompts.delete(id);
  }

  /** The open graph's prompts (to keep across a reload of the page, with the graph). */
  graphPromptIds(): string[] {
    return [...this.graphPrompts];
  }

  /** Put back the open graph's prompts `graphPromptIds` gave before a reload (non-strings skipped). */
  restoreGraphPrompts(ids: unknown): void {
    if (!Array.isArray(ids)) return;
    for (const id of ids.slice(-GRAPH_PROMPTS_MAX)) if (typeof id === "string" && id) this.graphPrompts.add(id);
    const ofGraph = this.mine(this.global.promptId);
    if (ofGraph !== this.global.ofGraph) {
      this.patchGlobal({ ofGraph });
      this.notify();
    }
  }

  /** Queue a websocket message; all queued messages are applied in the next frame. */
  enqueue(msg: WsMessage): void {
    this.pending.push(msg);
    this.kick();
  }

  /** Queue a live preview image (an object URL) for the executing node. */
  enqueuePreview(url: string): void {
    this.pending.push({ type: "__preview", url });
    this.kick();
  }

  private kick(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    this.schedule(() => this.flush());
  }

  /** Apply every queued message now, notifying subscribers once. */
  flush(): void {
    this.scheduled = false;
    const batch = this.pending;
    this.pending = [];
    if (!batch.length) return;
    for (const m of batch) {
      if (m.type === "__preview") this.applyPreview((m as { url: string }).url);
      else this.apply(m as WsMessage);
    }
    this.notify();
  }

  private applyPreview(url: string): void {
    const old = this.global.preview;
    const node = this.global.executing;
    // another graph's live preview shows in the side panel only
    if (node && this.mine(this.global.promptId)) {
      const run = this.nodes.get(node);
      if (run?.losses) {
        // a training node's preview is its sample image: kept until the node runs again
        this.dropSample(node);
        this.kept.add(url);
        this.patchNode(node, { sample: url, sampleStep: run.losses.at(-1)?.step });
      } else {
        const prev = run?.preview;
        this.patchNode(node, { preview: url });
        if (prev && prev !== url && prev !== old) this.release(prev);
      }
    }
    this.patchGlobal({ preview: url });
    if (old && old !== url) this.release(old);
  }

  /** Revoke an object URL unless a node keeps it as its sample image. */
  private release(url: string): void {
    if (!this.kept.has(url)) this.revoke(url);
  }

  /** Forget a node's sample image (revoked unless it is still the global preview). */
  private dropSample(id: string): void {
    const url = this.nodes.get(id)?.sample;
    if (!url) return;
    this.kept.delete(url);
    this.patchNode(id, { sample: undefined, sampleStep: undefined });
    if (url !== this.global.preview) this.revoke(url);
  }

  /** The executing node `id` ended; `draw`: its prompt is the open graph's (its node is marked done). */
  private finishNode(id: string | null, draw: boolean): void {
    if (!id) return;
    this.patchGlobal({ nodesDone: this.global.nodesDone + 1, progress: null });
    const run = this.nodes.get(id);
    if (!draw || run?.status !== "executing") return;
    // The last live preview stays on the node (as in ComfyUI), so it does not shrink when it finishes.
    if (run.preview) this.kept.add(run.preview);
    this.patchNode(id, { status: "done", progress: undefined });
  }

  /** Let a node's kept preview go (it runs again, or the graph changed). */
  private dropPreview(id: string): void {
    const url = this.nodes.get(id)?.preview;
    if (!url) return;
    this.patchNode(id, { preview: undefined });
    if (!this.kept.delete(url)) return; // a live preview: the next one releases it
    if (url !== this.global.preview) this.revoke(url);
  }

  /**
   * Add one step's loss to a node's curve (the last LOSS_POINTS_MAX steps). A step not after
   * the curve's last one means a new training (from step 1, or another run of the node): the
   * curve starts again. A resumed training goes on from its checkpoint's step, so its curve
   * continues; `resumedAt` marks the first step after the stop.
   */
  private addLoss(id: string, step: number, loss: number, resumedFrom?: number): void {
    const run = this.nodes.get(id);
    let old = run?.losses ?? [];
    // a step not after the last one shown: the steps from it on are being done again
    // (from 1: a new training, so a new curve; later: a resume from an earlier checkpoint)
    if (old.length && step <= (old.at(-1) as LossPoint).step) old = old.filter((p) => p.step < step);
    let resumedAt = old.length ? (run?.resumedAt ?? []).filter((r) => r < step && r >= old[0].step) : [];
    // the first step of another prompt on a kept curve: a resume, marked on the curve. Only when
    // both prompts are known: a page that does not know its running prompt (yet) marks nothing.
    const prompt = this.global.promptId ?? undefined;
    if (old.length && prompt !== undefined && run?.lossRun !== undefined && run.lossRun !== prompt) {
      resumedAt = [...resumedAt, step];
    } else if (resumedFrom !== undefined && resumedFrom > 0 && !resumedAt.includes(step)) {
      // the server says this step goes on from a checkpoint this page never saw the run of
      resumedAt = [...resumedAt, step];
    }
    this.patchNode(id, { lossRun: prompt ?? (old.length ? run?.lossRun : undefined),
      resumedAt: resumedAt.length ? resumedAt : undefined });
    const start = old.length >= LOSS_POINTS_MAX ? old.length - LOSS_POINTS_MAX + 1 : 0;
    this.patchNode(id, { losses: [...old.slice(start), { step, loss }] });
  }

  private apply(msg: WsMessage): void {
    const d = (msg.data ?? {}) as Record<string, unknown>;
    switch (msg.type) {
      case "status": {
        const status = d.status as { exec_info?: { queue_remaining?: number } } | undefined;
        const remaining = status?.exec_info?.queue_remaining;
        if (typeof remaining === "number") {
          this.patchGlobal({ queueRemaining: remaining, queueVersion: this.global.queueVersion + 1 });
        }
        break;
      }
      case "execution_start": {
        const promptId = (d.prompt_id as string) ?? null;
        const ofGraph = this.mine(promptId);
        // A new run of the open graph: forget the last run's states and errors, keep results
        // (images, text, a training node's loss curve and sample) until their node runs again.
        // Another graph's run leaves the nodes as they are.
        for (const [id, run] of ofGraph ? this.nodes : []) {
          if (run.status || run.progress || run.errors || run.preview) {
            this.nodes.set(id, { images: run.images, compare: run.compare, text: run.text, losses: run.losses,
              resumedAt: run.resumedAt, lossRun: run.lossRun, sample: run.sample,
              sampleStep: run.sampleStep, preview: run.status === "executing" ? undefined : run.preview });
          }
        }
        if (ofGraph) this.dropRejection();
        this.patchGlobal({
          running: true, promptId, executing: null, lastError: null,
          lastWarning: null, startedAt: Date.now(), nodesDone: 0, joinedMidway: false,
          queueVersion: this.global.queueVersion + 1, ofGraph, progress: null,
        });
        break;
      }
      case "execution_cached": {
        const cached = (d.nodes as string[] | undefined) ?? [];
        if (this.mine(this.promptOf(d))) for (const id of cached) this.patchNode(String(id), { status: "cached" });
        this.patchGlobal({ nodesDone: this.global.nodesDone + cached.length });
        break;
      }
      case "executing": {
        const node = d.node == null ? null : String(d.node);
        this.finishNode(this.global.executing, this.mine(this.global.promptId));
        // a prompt whose start this page did not see (it was reloaded while the prompt ran; the
        // server replays the running node to a client connecting anew): take it back
        if (node && typeof d.prompt_id === "string" && d.prompt_id && d.prompt_id !== this.global.promptId
          && (this.global.promptId === null || !this.global.running)) {
          this.join(d.prompt_id);
        }
        if (node) {
          if (this.mine(this.promptOf(d))) {
            this.dropSample(node);
            this.dropPreview(node);
            // a training node's curve stays while it goes on from where it stopped (a resume of the same
            // training reports steps after the last one shown); a run from step 1 starts a new curve
            // (progress below)
            this.patchNode(node, { status: "executing", progress: undefined });
          }
          this.patchGlobal({ executing: node, running: true, progress: null });
        } else {
          this.patchGlobal({ executing: null, running: false, queueVersion: this.global.queueVersion + 1 });
        }
        break;
      }
      case "progress": {
        const node = d.node == null ? this.global.executing : String(d.node);
        const value = Number(d.value);
        const max = Number(d.max);
        if (node && Number.isFinite(value) && Number.isFinite(max)) {
          if (node === this.global.executing) this.patchGlobal({ progress: { value, max } });
          if (!this.mine(this.promptOf(d))) break;
          this.patchNode(node, { progress: { value, max } });
          // training nodes: the step's loss (a JSON number; anything else is ignored)
          if (typeof d.loss === "number" && Number.isFinite(d.loss)) {
            this.addLoss(node, value, d.loss, typeof d.resumed_from === "number" ? d.resumed_from : undefined);
          }
        }
        break;
      }
      case "executed": {
        const node = String(d.node);
        const output = (d.output ?? {}) as { images?: ImageRef[]; text?: string[] };
        const patch: Partial<NodeRun> = {};
        if (Array.isArray(output.images)) patch.images = output.images;
        const compare = comparePair(output);
        if (compare) patch.compare = compare;
        if (Array.isArray(output.text)) patch.text = output.text.map(String);
        // another graph's outputs go to the gallery and History only
        if (this.mine(this.promptOf(d))) this.patchNode(node, patch);
        if (output.images?.length) {
          const items = output.images.map((img, i) => ({
            ...img, node, promptId: (d.prompt_id as string) ?? undefined,
            key: `${d.prompt_id ?? ""}:${node}:${i}:${img.subfolder ?? ""}/${img.filename}`,
          }));
          this.patchGlobal({ gallery: addToGallery(this.global.gallery, items) });
        }
        break;
      }
      case "node_warning": {
        const node = d.node == null ? "" : `node ${String(d.node)}: `;
        this.patchGlobal({ lastWarning: `${this.whose(d)}${node}${String(d.message ?? "")}` });
        break;
      }
      case "execution_error": {
        const node = d.node_id == null ? null : String(d.node_id);
        const draw = this.mine(this.promptOf(d));
        const whose = this.whose(d);
        if (d.exception_type === "ExecutionBlocked") {
          // An ExecutionBlocker's message (ComfyUI's form): the node skipped an element
          // or a branch; the run goes on, so it is a note on the node, not the end.
          const message = String(d.exception_message ?? "Execution Blocked");
          if (node && draw) this.patchNode(node, { errors: [...(this.getNode(node).errors ?? []), { message, kind: "execution_blocked" }] });
          this.patchGlobal({ lastWarning: `${whose}${node ? `${String(d.node_type ?? "node")} #${node}: ${message}` : message}` });
          break;
        }
        const type = d.exception_type ? `${String(d.exception_type)}: ` : "";
        const message = `${type}${String(d.exception_message ?? "execution failed")}`;
        const tb = d.traceback;
        const traceback = Array.isArray(tb) ? tb.join("") : typeof tb === "string" ? tb : undefined;
        if (node && draw) {
          this.patchNode(node, { status: "error", progress: undefined, errors: [{ message, kind: "execution_error", traceback }] });
        }
        if (draw) this.patchGlobal({ failure: { node, message, seq: (this.global.failure?.seq ?? 0) + 1 } });
        this.patchGlobal({
          running: false, executing: null, progress: null,
          lastError: `${whose}${node ? `${String(d.node_type ?? "node")} #${node}: ${message}` : message}`,
          queueVersion: this.global.queueVersion + 1,
        });
        break;
      }
      case "execution_success":
      case "execution_interrupted": {
        this.finishNode(this.global.executing, this.mine(this.global.promptId));
        // a node that did not stop in time had its worker restarted: say why the next run waits
        const note = msg.type === "execution_interrupted" ? (msg.data as { steerflow_note?: unknown }).steerflow_note : undefined;
        this.patchGlobal({
          running: false, executing: null, progress: null,
          lastError: msg.type === "execution_interrupted"
            ? (typeof note === "string" && note ? `interrupted: ${note}` : "interrupted")
            : this.global.lastError,
          queueVersion: this.global.queueVersion + 1,
        });
        break;
      }
      default:
        break;
    }
  }

  /** "A prompt not queued from this graph: " before a message about such a prompt (another workflow's or client's: its node ids need not be this graph's). */
  private whose(d: Record<string, unknown>): string {
    return this.mine(this.promptOf(d)) ? "" : "a prompt not queued from this graph: ";
  }

  /** Take back a running prompt whose start this page did not see (no `execution_start`). */
  private join(promptId: string): void {
    this.patchGlobal({ running: true, promptId, startedAt: null, nodesDone: 0, joinedMidway: true,
      lostPrompt: null, queueVersion: this.global.queueVersion + 1, ofGraph: this.mine(promptId) });
  }

  /**
   * After a (re)load: this page's prompt that the server's queue says is running (queued by
   * this tab before it was reloaded: same client id). Its events come to this page from now
   * on; it is taken back so that the queue shows its progress and a training node's curve
   * goes on without "resumed" marks. Nothing changes when this page already knows it.
   */
  adoptRunning(promptId: string | null | undefined): void {
    this.flush();
    if (!promptId || this.global.promptId === promptId) return;
    if (this.global.running && this.global.promptId) return; // a prompt seen from its start
    this.join(promptId);
    this.notify();
  }

  /** The nodes' loss curves (a training's steps so far), to keep across a reload of the page. */
  lossCurves(): Record<string, Pick<NodeRun, "losses" | "resumedAt" | "lossRun">> {
    const out: Record<string, Pick<NodeRun, "losses" | "resumedAt" | "lossRun">> = {};
    for (const [id, run] of this.nodes) {
      if (run.losses?.length) out[id] = { losses: run.losses, resumedAt: run.resumedAt, lossRun: run.lossRun };
    }
    return out;
  }

  /** Put back the loss curves `lossCurves` gave before a reload (malformed entries are skipped). */
  restoreLossCurves(curves: unknown): void {
    if (!curves || typeof curves !== "object") return;
    let changed = false;
    for (const [id, c] of Object.entries(curves as Record<string, unknown>)) {
      const entry = c as { losses?: unknown; resumedAt?: unknown; lossRun?: unknown } | null;
      if (!entry || !Array.isArray(entry.losses) || this.nodes.get(id)?.losses) continue;
      const losses = entry.losses.filter((p): p is LossPoint => !!p && typeof p === "object"
        && Number.isFinite((p as LossPoint).step) && Number.isFinite((p as LossPoint).loss)).slice(-LOSS_POINTS_MAX);
      if (!losses.length) continue;
      const resumedAt = Array.isArray(entry.resumedAt) ? entry.resumedAt.filter((r): r is number => Number.isFinite(r)) : [];
      this.patchNode(id, { losses, resumedAt: resumedAt.length ? resumedAt : undefined,
        lossRun: typeof entry.lossRun === "string" ? entry.lossRun : undefined });
      changed = true;
    }
    if (changed) this.notify();
  }

  setConnected(connected: boolean): void {
    if (connected !== this.global.connected) {
      this.patchGlobal({ connected });
      if (!connected) this.loseRun();
      // "Cannot reach the server" no longer holds once the server answers again
      if (connected && this.offlineError !== null && this.global.lastError === this.offlineError) {
        this.patchGlobal({ lastError: null });
      }
      if (connected) this.offlineError = null;
      this.notify();
    }
  }

  /**
   * The connection dropped: what runs is unknown from now on. The running node loses its
   * running frame and progress (its last preview stays), the timer stops, and the prompt is
   * remembered as `lostPrompt` until `resync` learns from the server what became of it.
   */
  private loseRun(): void {
    this.flush(); // messages that came before the close
    const { running, promptId, executing } = this.global;
    for (const [id, run] of this.nodes) {
      if (run.status === "executing") this.nodes.set(id, { ...run, status: undefined, progress: undefined });
    }
    if (running || executing) {
      this.patchGlobal({ running: false, executing: null, progress: null, startedAt: null,
        lostPrompt: promptId ?? this.global.lostPrompt });
    }
  }

  /**
   * After a reconnect: make the run state true to the server's queue and history. `mine`: this
   * page's prompt ids among the server's running ones (their events come to this page). Returns
   * what became of the prompt lost with the connection, if any, in words for the user.
   */
  resync(server: ServerState, mine: (promptId: string) => boolean): Resynced | null {
    this.flush();
    const lost = this.global.lostPrompt;
    const run = server.running.find((r) => mine(r.promptId));
    if (run && !this.global.running) {
      // running again (a restarted server re-runs its killed head): its events follow
      this.patchGlobal({ running: true, promptId: run.promptId, executing: null, startedAt: Date.now(), nodesDone: 0,
        ofGraph: this.mine(run.promptId), progress: null });
    } else if (!run && this.global.running && !this.global.executing) {
      this.patchGlobal({ running: false, startedAt: null });
    }
    this.patchGlobal({ lostPrompt: null, queueVersion: this.global.queueVersion + 1 });
    this.notify();
    if (!lost) return null;
    const again = server.running.find((r) => r.promptId === lost);
    if (again) {
      return { kind: "rerunning", promptId: lost, number: again.number,
        text: `The server restarted and is running prompt #${again.number} again from the start (it was running when the connection was lost).` };
    }
    const queued = server.pending.find((r) => r.promptId === lost);
    if (queued) {
      return { kind: "requeued", promptId: lost, number: queued.number,
        text: `The server re-queued prompt #${queued.number} after it restarted: it will run again from the start.` };
    }
    const done = server.history.find((h) => h.promptId === lost);
    if (done) {
      return { kind: "finished", promptId: lost, number: done.number,
        text: `Prompt #${done.number} ended while the connection was lost (${done.status}); its results are in History.` };
    }
    return { kind: "gone", promptId: lost, text: "The prompt that was running when the connection was lost is no longer on the server (not queued, not in its history)." };
  }

  /** Show a rejected prompt's node_errors on the nodes and inputs they name. */
  setValidationErrors(nodeErrors: NodeErrors): void {
    for (const [id, entry] of Object.entries(nodeErrors ?? {})) {
      const errors: NodeIssue[] = (entry.errors ?? []).map((e) => ({
        // details: Steerflow's own words; message: ComfyUI's generic one for the type
        message: e.details || e.message || e.type || "invalid",
        kind: e.type,
        input: e.extra_info?.input_name ?? undefined,
      }));
      this.patchNode(id, { status: "error", errors });
    }
    this.notify();
  }

  /** Forget every node's errors (before queueing again). */
  clearErrors(): void {
    let changed = false;
    for (const [id, run] of this.nodes) {
      if (run.errors) {
        this.nodes.set(id, { ...run, errors: undefined, status: run.status === "error" ? undefined : run.status });
        changed = true;
      }
    }
    if (this.global.lastError || this.global.rejection) {
      this.patchGlobal({ lastError: null });
      this.dropRejection();
      changed = true;
    }
    if (changed) this.notify();
  }

  /** The issues still marked on the nodes, in the server's node_errors shape. */
  markedErrors(): NodeErrors {
    const out: NodeErrors = {};
    for (const [id, run] of this.nodes) {
      if (!run.errors?.length) continue;
      out[id] = { errors: run.errors.map((e) => ({ type: e.kind, message: e.message, extra_info: { input_name: e.input ?? null } })) };
    }
    return out;
  }

  /**
   * A Queue was rejected: `describe` says so in one line from the issues marked on the nodes,
   * now (the status bar's error) and again each time the user fixes one of them. When it
   * returns null (nothing left to fix), the rejection and the status bar's error go.
   */
  setRejection(describe: (marked: NodeErrors) => string | null): void {
    this.describeRejection = describe;
    this.offlineError = null;
    const text = describe(this.markedErrors());
    if (text === null) this.describeRejection = null;
    this.patchGlobal({ rejection: text, lastError: text });
    this.notify();
  }

  /** Say the rejection again after an issue was fixed; the status bar follows unless a run's error replaced it. */
  private updateRejection(): void {
    if (!this.describeRejection) return;
    const before = this.global.rejection;
    const text = this.describeRejection(this.markedErrors());
    if (text === before) return;
    if (text === null) this.describeRejection = null;
    this.patchGlobal({ rejection: text, ...(this.global.lastError === before ? { lastError: text } : {}) });
  }

  private dropRejection(): void {
    this.describeRejection = null;
    if (this.global.rejection !== null) this.patchGlobal({ rejection: null });
  }

  /**
   * Forget the issues on one input of a node: the user changed its value or linked it, so
   * the last run's message about it ("got -1", "is missing") no longer describes the graph.
   * The node's other issues stay until the next queue.
   */
  clearInputErrors(node: string, input: string): void {
    const run = this.nodes.get(node);
    if (!run?.errors?.some((e) => e.input === input)) return;
    const errors = run.errors.filter((e) => e.input !== input);
    const status = !errors.length && run.status === "error" ? undefined : run.status;
    this.nodes.set(node, { ...run, errors: errors.length ? errors : undefined, status });
    this.updateRejection();
    this.notify();
  }

  /** The status bar's error; `offline`: the server could not be reached (cleared when it can again). */
  setLastError(message: string | null, { offline = false }: { offline?: boolean } = {}): void {
    this.offlineError = offline ? message : null;
    this.patchGlobal({ lastError: message });
    this.notify();
  }

  bumpQueue(): void {
    this.patchGlobal({ queueVersion: this.global.queueVersion + 1 });
    this.notify();
  }

  /**
   * Forget everything about nodes that were removed or replaced: another graph is open, so
   * the prompts queued until now are not its own (their run messages no longer draw on it).
   */
  reset(): void {
    for (const url of this.kept) if (url !== this.global.preview) this.revoke(url);
    this.kept.clear();
    this.nodes.clear();
    this.graphPrompts.clear();
    if (this.global.promptId !== null && this.global.ofGraph) this.patchGlobal({ ofGraph: false });
    // the status bar's error and warning were about the graph that was replaced
    if (this.global.lastError || this.global.lastWarning) this.patchGlobal({ lastError: null, lastWarning: null });
    this.dropRejection();
    this.notify();
  }

  /**
   * Put past results back (from the server's /history, after a reload): each node's
   * images and text, and the gallery when this session has none yet. Nodes that ran
   * since keep their newer results.
   */
  restoreResults(outputs: { node: string; output: { images?: ImageRef[]; text?: unknown[] }; promptId: string }[],
    gallery: GalleryItem[], { newer = false }: { newer?: boolean } = {}): void {
    for (const { node, output } of outputs) {
      const run = this.nodes.get(node);
      // `newer`: the outputs of a prompt that finished after the page loaded (one it did not
      // run itself, e.g. queued by the tab closed before): they replace the older results,
      // but not what ran in this page since
      if (run?.status || (!newer && (run?.images || run?.text))) continue;
      const patch: Partial<NodeRun> = {};
      if (Array.isArray(output.images)) patch.images = output.images;
      const compare = comparePair(output);
      if (compare) patch.compare = compare;
      if (Array.isArray(output.text)) patch.text = output.text.map(String);
      this.patchNode(node, patch);
    }
    if (newer && gallery.length) this.patchGlobal({ gallery: addToGallery(this.global.gallery, gallery) });
    else if (!this.global.gallery.length && gallery.length) this.patchGlobal({ gallery: addToGallery([], gallery) });
    this.notify();
  }
}

/** An image's identity on the server: the same file, whichever prompt or node reported it. */
export function imageKey(img: ImageRef): string {
  return JSON.stringify([img.type ?? "output", img.subfolder ?? "", img.filename]);
}

/**
 * The gallery with `items` (newest first) put in front: an image already in it moves to the
 * front rather than being shown twice (a fully cached run reports the same file again), and
 * at most `max` items are kept.
 */
export function addToGallery(gallery: readonly GalleryItem[], items: readonly GalleryItem[],
  max = GALLERY_MAX): GalleryItem[] {
  const seen = new Set<string>();
  const out: GalleryItem[] = [];
  for (const item of [...items, ...gallery]) {
    const key = imageKey(item);
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(item);
    if (out.length >= max) break;
  }
  return out;
}

/** Parse a binary websocket frame: uint32 BE event (1 = preview), uint32 BE image type, bytes. */
export function parsePreviewFrame(buf: ArrayBuffer): { mime: string; bytes: Uint8Array } | null {
  if (buf.byteLength < 8) return null;
  const view = new DataView(buf);
  const event = view.getUint32(0);
  if (event !== 1) return null;
  const imageType = view.getUint32(4);
  return { mime: imageType === 2 ? "image/png" : "image/jpeg", bytes: new Uint8Array(buf, 8) };
}
