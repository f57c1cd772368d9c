"""One prompt's run: the executor's work-list (see :mod:`engine.executor`)."""

from __future__ import annotations

import concurrent.futures
import heapq
import logging
import traceback
from typing import TYPE_CHECKING, Any

from engine.calls import (
    ClassInfo,
    PerCall,
    _check_outputs,
    _normalize,
    class_info,
    merge_calls,
    plan_calls,
)
from engine.context import ExecutionContext, Interrupted, InterruptFlag, signing_node
from engine.expansion import DependencyCycleError, DynamicGraph
from engine.lists import (
    EXECUTION_BLOCKED,
    SPECIAL,
    NotReturned,
    ValueList,
    as_lists,
    calls,
    merge_outputs,
)
from engine.node import Node
from engine.outputs import (
    RunResult,
    _hashable_constants,
    _NodeFailure,
    _now_ms,
    bounded_message,
    error_input_value,
)
from engine.run_expansion import ExpansionSteps
from engine.signature import signature
from engine.validation import ValidatedNode, ValidatedPrompt, check_constant, linked_spec

#: the base class's fingerprint (None): not worth a call per node
_NO_FINGERPRINT = Node.fingerprint.__func__

if TYPE_CHECKING:
    from engine.executor import EventCallback, Executor

log = logging.getLogger("engine.executor")


def full_type_name(cls: type) -> str:
    """An exception's type as ComfyUI's ``execution_error`` names it: ``OSError`` for a
    builtin, ``module.QualName`` for any other."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


_WAITING, _RUNNING, _DONE = 0, 1, 3  # and _EXPANDED (2), set by ExpansionSteps


class _Run(ExpansionSteps):
    """One prompt's execution state; kept apart so the executor stays reentrant.

    A work-list over a graph that can grow: ``_schedule`` walks back from a node
    through its non-lazy links, stopping at cached outputs, and counts what each
    node waits on; a node whose count reaches zero is ready (a heap ordered by
    topological rank, so a static prompt runs in the validated order). A lazy node,
    once ready, says which lazy inputs it needs and waits again; an expanded node
    waits on its subgraph's linked outputs. Each use of an output pins it until its
    consumer is done. Async nodes run on the executor's event loop, concurrently.
    """

    def __init__(self, executor: Executor, vp: ValidatedPrompt, prompt: dict[str, Any],
                 prompt_id: str, extra: dict[str, Any], emit: EventCallback,
                 flag: InterruptFlag | None):
        self.ex = executor
        self.cache = executor.cache
        self.vp = vp
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra = extra
        self.emit = emit
        self.flag = flag if flag is not None else InterruptFlag()
        self.nodes: dict[str, ValidatedNode] = dict(vp.nodes)
        self.sigs: dict[str, str] = {}
        #: nodes signed before a linked string input was known (``_fingerprint``)
        self.provisional: set[str] = set()
        self.rank: dict[str, int] = {n: i for i, n in enumerate(vp.order)}
        self.result = RunResult(prompt_id, "success")
        self.state: dict[str, int] = {}
        self.waits: dict[str, int] = {}  # sources a waiting node still waits on
        self.uses: dict[str, set[str]] = {}  # sources each scheduled node reads (pinned)
        self.dependents: dict[str, list[str]] = {}
        self.ready: list[tuple[int, str]] = []
        self.held: dict[str, int] = {}  # pins this run holds, per node
        self.expansions: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.inflight: dict[concurrent.futures.Future[Any], tuple[str, ExecutionContext]] = {}
        self.new_cached: list[str] = []
        self._graph: DynamicGraph | None = None
        self._classes: dict[str, type[Node]] | None = None
        self._memo: dict[Any, Any] = {}  # validation checks passed by expansions
        self._announced = False

    def execute(self) -> RunResult:
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})
        current: str | None = None
        try:
            self._sign_all()
            for node_id in self.vp.outputs:
                if node_id in self.state:  # also what an earlier output needs
                    continue
                if self.sigs[node_id] in self.cache:
                    self._mark_cached(node_id)
                else:
                    self._schedule(node_id)
            for node_id in self.vp.order:
                # ComfyUI lists every cached node, needed or not: its frontend counts them
                # done (the prompt's progress would otherwise stop short of 100%)
                if node_id not in self.state and self.sigs[node_id] in self.cache:
                    self._mark_cached(node_id)
            self._flush_cached()
            while True:
                if self.flag.is_set():
                    raise Interrupted(self.prompt_id)
                if self.inflight:
                    self._collect_async(block=not self.ready)
                if self.ready:
                    current = heapq.heappop(self.ready)[1]
                    self._run_ready(current)
                    self._flush_cached()
                elif not self.inflight:
                    break
            current = None
            self._check_finished()
            self._collect_outputs()
            self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now_ms()})
        except Interrupted:
            self.result.status = "interrupted"
            node = self.nodes.get(current or "")
            self.emit("execution_interrupted", {
                "prompt_id": self.prompt_id, "node_id": current,
                "node_type": node.cls.TYPE if node else None,
                "executed": list(self.result.executed), "timestamp": _now_ms()})
        except Exception as exc:
            self.result.status = "error"
            self.result.error = self._error_payload(current, exc)
            self.emit("execution_error", self.result.error)
        finally:
            for future in self.inflight:
                future.cancel()
            for node_id, count in self.held.items():
                for _ in range(count):
                    self.cache.unpin(self.sigs[node_id])
            self.held.clear()
            self.emit("executing", {"node": None, "display_node": None,
                                    "prompt_id": self.prompt_id})
        return self.result

    def _collect_outputs(self) -> None:
        """Every UI result of the prompt: the output nodes' in the prompt's order, then
        any other node's that showed one (ComfyUI's history keeps them all). Kept as
        they ran, in case the cache dropped one since; else read from the cache."""
        ran = self.result.outputs
        outputs: dict[str, dict[str, Any]] = {}
        for node_id in [*self.vp.outputs, *self.vp.order, *ran]:
            if node_id in outputs:
                continue
            ui = ran.get(node_id)
            if ui is None and node_id in self.sigs:
                entry = self.cache.peek(self.sigs[node_id])
                ui = entry.ui if entry is not None else None
            if ui:
                outputs[node_id] = ui
        self.result.outputs = outputs

    # --- signatures ------------------------------------------------------------
    def _sign_all(self) -> None:
        for node_id in self.vp.order:
            self._sign(self.nodes[node_id])

    def _sign(self, node: ValidatedNode, ephemeral: bool = False) -> None:
        sigs = self.sigs
        upstream = [(name, sigs[src], idx) for name, (src, idx) in sorted(node.links.items())]
        if any(src in self.provisional for src, _ in node.links.values()):
            self.provisional.add(node.id)
        fingerprint = None
        if getattr(node.cls.fingerprint, "__func__", None) is not _NO_FINGERPRINT:  # most: none
            try:
                with signing_node(node.id, self.prompt):
                    fingerprint = self._fingerprint(node)
            except Exception as exc:
                raise _NodeFailure(node.id, exc) from exc
        if node.cls.PER_NODE:
            fingerprint = [node.id, fingerprint]
        constants = _hashable_constants(node.constants) if ephemeral else node.constants
        sigs[node.id] = signature(node.cls.TYPE, node.cls.VERSION, constants, fingerprint,
                                  upstream)

    def _fingerprint(self, node: ValidatedNode) -> Any:
        """The node's fingerprint, given its linked string inputs too (a file name or a
        prompt from a primitive: the file must be checked as when it is typed in). A
        source not in the cache yet leaves the node's signature provisional: it is signed
        again, its inputs known, before it runs (``_resign``)."""
        info = class_info(node.cls)
        linked: dict[str, Any] = {}
        for name, (src, idx) in node.links.items():
            if name not in info.text:
                continue
            entry = self.cache.peek(self.sigs[src])
            if entry is None or idx >= len(entry.outputs):
                self.provisional.add(node.id)
                return node.cls.fingerprint(node.constants, self.ex.env)
            linked[name] = entry.outputs[idx]
        inputs = {**node.constants, **linked}
        lists = {k: v for k, v in linked.items() if isinstance(v, ValueList)}
        if not lists or info.input_is_list:
            return node.cls.fingerprint(inputs, self.ex.env)
        # mapped over a list: one call per item, as the node runs (the last item repeats)
        n = max(len(v) for v in lists.values())
        items = [{k: v[min(i, len(v) - 1)] for k, v in lists.items() if v} for i in range(n)]
        return [node.cls.fingerprint({**inputs, **item}, self.ex.env) for item in items]

    def _resign(self, node_id: str) -> None:
        """Sign a provisional node again, now that its sources have run (see ``_fingerprint``)."""
        self.provisional.discard(node_id)  # (back in if a lazy source has not run yet)
        self._sign(self.nodes[node_id], ephemeral=node_id not in self.vp.nodes)

    # --- scheduling ------------------------------------------------------------
    def _schedule(self, node_id: str) -> None:
        """Make ``node_id`` (not cached) and what it needs run, walking back iteratively."""
        stack = [node_id]
        while stack:
            n = stack.pop()
            if n in self.state:
                continue
            self.state[n] = _WAITING
            node = self.nodes[n]
            lazy = class_info(node.cls).lazy
            uses = self.uses[n] = set()
            waits = 0
            for name, (src, _) in node.links.items():
                if src in uses or (lazy and name in lazy):
                    continue
                if self._use(n, src, uses):
                    waits += 1
                    if src not in self.state:
                        stack.append(src)
            self.waits[n] = waits
            if waits == 0:
                heapq.heappush(self.ready, (self.rank[n], n))

    def _use(self, consumer: str, src: str, uses: set[str]) -> bool:
        """``consumer`` reads ``src``; True if it must wait for it to run."""
        uses.add(src)
        state = self.state.get(src)
        if state is None or state == _DONE:
            if self.sigs[src] in self.cache:
                self._pin(src)
                if state is None:
                    self._mark_cached(src)
                return False
            if state == _DONE:  # evicted since it ran: run it again
                del self.state[src]
        self.dependents.setdefault(src, []).append(consumer)
        return True

    def _mark_cached(self, node_id: str) -> None:
        self.state[node_id] = _DONE
        self.new_cached.append(node_id)

    def _flush_cached(self) -> None:
        """``execution_cached`` for nodes newly found in the cache, then their UI."""
        if not self.new_cached and self._announced:
            return
        self._announced = True
        found = sorted(self.new_cached, key=lambda n: self.rank.get(n, len(self.rank)))
        self.new_cached = []
        self.result.cached.extend(found)
        # clients know the prompt's nodes only: an expansion's inner ids ("4.10") are
        # not listed, as ComfyUI lists none (their UI still comes as ``executed``)
        listed = [n for n in found if n in self.vp.nodes]
        if listed or not found:
            self.emit("execution_cached", {"nodes": listed, "prompt_id": self.prompt_id,
                                           "timestamp": _now_ms()})
        # ``executed`` for each with a UI result, as ComfyUI sends it: a client that
        # shows results from ``executed`` must see a fully cached prompt's too.
        # An output node of the prompt without one gets ``executed`` with a null output
        # (ComfyUI sends that for each cached output node, so a client that waits for
        # every output node's ``executed`` is not left waiting).
        for node_id in found:
            entry = self.cache.get(self.sigs[node_id])
            ui = entry.ui if entry is not None else None
            if ui or (node_id in self.vp.nodes and self.nodes[node_id].cls.OUTPUT_NODE):
                self.emit("executed", {"node": node_id, "display_node": self._display(node_id),
                                       "output": ui or None, "prompt_id": self.prompt_id})

    def _complete(self, node_id: str) -> None:
        """``node_id``'s outputs are in the cache: release what it read, wake its users."""
        self.state[node_id] = _DONE
        for src in self.uses.pop(node_id, ()):
            self._unpin(src)
        for user in self.dependents.pop(node_id, ()):
            self.waits[user] -= 1
            if self.waits[user] == 0:
                heapq.heappush(self.ready, (self.rank[user], user))

    def _check_finished(self) -> None:
        stalled = {n for n, s in self.state.items() if s != _DONE}
        if not stalled:
            return
        # Each stalled node waits on a stalled source: follow those edges to a cycle.
        waits_on = {n: sorted(s for s in self.uses.get(n, ()) if s in stalled
                              and self.state.get(s) != _DONE) for n in stalled}
        node_id, seen = min(stalled, key=lambda n: self.rank.get(n, 0)), {}
        path: list[str] = []
        while node_id not in seen and waits_on.get(node_id):
            seen[node_id] = len(path)
            path.append(node_id)
            node_id = waits_on[node_id][0]
        cycle = path[seen[node_id]:] if node_id in seen else path or sorted(stalled)
        raise _NodeFailure(cycle[0], DependencyCycleError(list(reversed(cycle))))

    # --- running ---------------------------------------------------------------
    def _run_ready(self, node_id: str) -> None:
        if node_id in self.expansions:
            self._resolve_expansion(node_id)
            return
        if node_id in self.provisional:
            self._resign(node_id)
        sig = self.sigs[node_id]
        if sig in self.cache:  # a duplicate node earlier in this prompt made it
            for _ in self.dependents.get(node_id, ()):
                self._pin(node_id)
            entry = self.cache.get(sig)
            if entry is not None and entry.ui:
                # a cache hit to ComfyUI too: its ``executed`` shows the twin's result
                self.result.outputs[node_id] = entry.ui
                self.emit("executed", {"node": node_id, "display_node": self._display(node_id),
                                       "output": entry.ui, "prompt_id": self.prompt_id})
            self._complete(node_id)
            return
        node = self.nodes[node_id]
        info = class_info(node.cls)
        ctx = ExecutionContext(self.prompt_id, node_id, self.ex.env, self.emit, self.flag,
                               self.prompt, self.extra, self)
        try:
            kwargs, special = self._inputs(node, info)
            if info.lazy:
                kwargs, special, waiting = self._request_lazy(node, info, kwargs, special, ctx)
                if waiting:
                    return
        except Interrupted:
            raise
        except Exception as exc:
            raise _NodeFailure(node_id, exc) from exc
        self.emit("executing", {"node": node_id, "display_node": self._display(node_id),
                                "prompt_id": self.prompt_id})
        if info.is_async:
            self._start_async(node, info, kwargs, special, ctx)
            return
        try:
            if special or info.input_is_list:
                outputs, ui, expand = self._run_mapped(node, info, kwargs, ctx)
            else:
                returned = node.cls.model_construct(**kwargs).execute(ctx)
                outputs, ui, expand = _normalize(returned, len(node.cls.OUTPUTS), node.cls.TYPE,
                                                 node.cls.EXTRA_OUTPUTS)
                if expand is None:
                    _check_outputs(node.cls, outputs)
                    if info.any_list_out:
                        outputs = merge_outputs([outputs], info.output_is_list)
            self._finish(node_id, outputs, ui, expand)
        except Interrupted:
            raise
        except _NodeFailure:
            raise
        except Exception as exc:
            raise _NodeFailure(node_id, exc) from exc
        except SystemExit as exc:  # a pack's sys.exit() must not end the CLI or a worker
            raise _NodeFailure(node_id, RuntimeError(
                f"the node called sys.exit({exc.code!r}); a node must raise an error "
                "instead of ending the process")) from exc

    def _inputs(self, node: ValidatedNode, info: ClassInfo) -> tuple[dict[str, Any], bool]:
        """The node's keyword arguments, and whether any is a list or a blocker."""
        kwargs = dict(node.constants)
        uses = self.uses.get(node.id, ())
        special = False
        for name, (src, idx) in node.links.items():
            if src not in uses:  # a lazy input not (yet) asked for
                kwargs[name] = None
                continue
            if name in info.raw:
                kwargs[name] = [src, idx]
                continue
            entry = self.cache.get(self.sigs[src])
            if entry is None:
                raise RuntimeError(f"internal: output of node {src} is missing from the cache")
            try:
                value = entry.outputs[idx]
            except IndexError:  # an EXTRA_OUTPUTS node returned fewer: None, as ComfyUI
                value = None
            missing = value if isinstance(value, NotReturned) else next(
                (v for v in value if isinstance(v, NotReturned)), None) \
                if isinstance(value, ValueList) else None
            if missing is not None:  # also from a node that ran once per list item
                value = missing
                source = self.nodes[src].cls
                raise ValueError(
                    f"input '{name}' is linked to output {idx} of node {src} "
                    f"({source.DISPLAY_NAME or source.TYPE}), which that node did not return: "
                    f"it returned {value.returned} of the {len(source.OUTPUTS)} values it "
                    "declares (a defect of its pack; link one of the outputs it returns)")
            if isinstance(value, SPECIAL):
                special = True  # checked per element when mapped
            else:
                spec = linked_spec(node.cls, name, node.constants)
                if spec is not None and spec.is_widget and not spec.accepts_as_is(value):
                    value, issue = check_constant(spec, value, self.ex.env)
                    if issue is not None:
                        raise ValueError(issue.message)
            kwargs[name] = value
        return kwargs, special

    def _request_lazy(self, node: ValidatedNode, info: ClassInfo, kwargs: dict[str, Any],
                      special: bool, ctx: ExecutionContext
                      ) -> tuple[dict[str, Any], bool, bool]:
        """Ask the node which lazy inputs it needs until it needs none it lacks;
        returns the inputs, whether one is special, and whether it now waits."""
        uses = self.uses[node.id]
        while True:
            if special or info.input_is_list:
                sets = [as_lists(kwargs)] if info.input_is_list else list(calls(kwargs))
            else:
                sets = [kwargs]
            wanted: list[str] = []
            for kw in sets:
                wanted.extend(node.cls.model_construct(**kw).check_lazy_status(ctx) or ())
            new = [name for name in dict.fromkeys(wanted)
                   if name in info.lazy and name in node.links
                   and node.links[name][0] not in uses]
            if not new:
                return kwargs, special, False
            waits = 0
            for name in new:
                src = node.links[name][0]
                if src in uses:
                    continue
                if self._use(node.id, src, uses):
                    waits += 1
                    if src not in self.state:
                        self._schedule(src)
            if waits:
                self.waits[node.id] = waits
                return kwargs, special, True
            kwargs, special = self._inputs(node, info)  # all were cached: ask again

    def _run_mapped(self, node: ValidatedNode, info: ClassInfo, kwargs: dict[str, Any],
                    ctx: ExecutionContext
                    ) -> tuple[tuple[Any, ...] | PerCall, dict[str, Any] | None,
                               dict[str, Any] | None]:
        plan = plan_calls(node, kwargs, input_is_list=info.input_is_list, raw=info.raw,
                          env=self.ex.env, report_block=lambda m: self._report_block(node, m))
        results: list[tuple[Any, ...] | None] = []
        for call in plan:
            if call is None:
                results.append(None)
                continue
            ctx.check_interrupt()
            results.append(node.cls.model_construct(**call).execute(ctx))
        return merge_calls(node.cls, info.output_is_list, results)

    def _report_block(self, node: ValidatedNode, message: str) -> None:
        """A blocker with a message stopped (one call of) ``node``: reported as
        ComfyUI does, an ``execution_error`` of type ``ExecutionBlocked`` that ends
        nothing else; the run goes on (clients tell it by its type)."""
        self.result.blocked[node.id] = message
        self.emit("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node.id,
            "display_node": self._display(node.id), "node_type": node.cls.TYPE,
            "executed": list(self.result.executed),
            "exception_message": f"Execution Blocked: {message}",
            "exception_type": EXECUTION_BLOCKED, "traceback": [], "current_inputs": [],
            "current_outputs": [], "timestamp": _now_ms()})

    def _finish(self, node_id: str, outputs: tuple[Any, ...] | PerCall,
                ui: dict[str, Any] | None, expand: dict[str, Any] | None) -> None:
        self.result.executed.append(node_id)
        if expand is not None:
            self._expand(node_id, outputs, ui, expand)
        else:
            self._store(node_id, outputs, ui)

    def _store(self, node_id: str, outputs: tuple[Any, ...], ui: dict[str, Any] | None) -> None:
        pins = len(self.dependents.get(node_id, ()))
        self.cache.put(self.sigs[node_id], outputs, ui, pins=pins)
        if pins:
            self.held[node_id] = self.held.get(node_id, 0) + pins
        if ui:
            self.result.outputs[node_id] = ui
            self.emit("executed", {"node": node_id, "display_node": self._display(node_id),
                                   "output": ui, "prompt_id": self.prompt_id})
        self._complete(node_id)

    # --- async -----------------------------------------------------------------
    def _start_async(self, node: ValidatedNode, info: ClassInfo, kwargs: dict[str, Any],
                     special: bool, ctx: ExecutionContext) -> None:
        mapped = special or info.input_is_list
        plan = plan_calls(node, kwargs, input_is_list=info.input_is_list, raw=info.raw,
                          env=self.ex.env, report_block=lambda m: self._report_block(node, m)
                          ) if mapped else [kwargs]

        async def job() -> list[Any]:
            results = []
            for call in plan:
                results.append(None if call is None else
                               await node.cls.model_construct(**call).execute(ctx))
            return results

        self.state[node.id] = _RUNNING
        future = self.ex.async_host().submit(job())
        self.inflight[future] = (node.id, ctx)

    def _collect_async(self, block: bool) -> None:
        """Finish the async nodes that are done (waiting for one if ``block``)."""
        done, _ = concurrent.futures.wait(list(self.inflight), timeout=0.05 if block else 0,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            node_id, _ctx = self.inflight.pop(future)
            node = self.nodes[node_id]
            try:
                returned = future.result()
                outputs, ui, expand = merge_calls(node.cls, class_info(node.cls).output_is_list,
                                                  returned)
                self._finish(node_id, outputs, ui, expand)
            except (Interrupted, _NodeFailure):
                raise
            except Exception as exc:
                raise _NodeFailure(node_id, exc) from exc

    # --- pins and errors -------------------------------------------------------
    def _display(self, node_id: str) -> str:
        return self._graph.get_display_node_id(node_id) if self._graph is not None else node_id

    def _pin(self, node_id: str) -> None:
        self.cache.pin(self.sigs[node_id])
        self.held[node_id] = self.held.get(node_id, 0) + 1

    def _unpin(self, node_id: str) -> None:
        if self.held.get(node_id):
            self.held[node_id] -= 1
            self.cache.unpin(self.sigs[node_id])

    def _error_inputs(self, node: ValidatedNode | None) -> dict[str, list[Any]]:
        """A failed node's inputs as ComfyUI's ``execution_error`` shows them: each a
        list of its values, linked ones too (what is not plain JSON as a short text)."""
        if node is None:
            return {}
        shown = {k: [error_input_value(v)] for k, v in node.constants.items()}
        for name, (source, index) in node.links.items():
            entry = self.cache.peek(self.sigs[source]) if source in self.sigs else None
            if entry is not None and index < len(entry.outputs):
                shown[name] = [error_input_value(entry.outputs[index])]
        return shown

    def _error_payload(self, current: str | None, exc: Exception) -> dict[str, Any]:
        if isinstance(exc, _NodeFailure):
            current, exc = exc.node_id, exc.original
        node = self.nodes.get(current or "")
        if not isinstance(exc, ValueError | OSError | DependencyCycleError):
            # bad input and the file system's refusals (a full disk) are the user's to
            # read in the error; the traceback stays in its payload
            log.error("node %s failed", current, exc_info=exc)
        payload = {
            "prompt_id": self.prompt_id,
            "node_id": current,
            "node_type": node.cls.TYPE if node else None,
            "executed": list(self.result.executed),
            "exception_message": bounded_message(str(exc)),
            "exception_type": full_type_name(type(exc)),
            "traceback": [bounded_message(line) for line in traceback.format_exception(exc)],
            # ComfyUI's shapes: each input as a list of its values, the node ids whose
            # outputs are at hand as a list
            "current_inputs": self._error_inputs(node),
            "current_outputs": [*self.result.cached, *self.result.executed],
            "timestamp": _now_ms(),
        }
        if isinstance(exc, DependencyCycleError):
            payload["cycle"] = exc.cycle
        if current is not None and self._graph is not None and current in self._graph.display:
            payload["display_node"] = self._graph.get_display_node_id(current)
        return payload


