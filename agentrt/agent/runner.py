"""`run_task`: a validated task file run through the agent loop, recorded in the catalog.

One JSONL record per input id; the run and its items in the catalog (`RunStore`); the
session checkpointed every `session.checkpoint_every` inputs together with its messages,
so `--resume` skips finished inputs and continues the conversation from disk.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrt.agent.callbacks import AgentCallbacks
from agentrt.agent.loop import Agent, AgentResult
from agentrt.agent.task import InputSpec, TaskSpec
from agentrt.errors import SessionError

DONE = "done"


@dataclass
class RunSummary:
    """What a run did: per-input records, the run id, whether it was interrupted."""

    run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    interrupted: bool = False
    sessions: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Ids of the inputs that did not finish with an answer."""
        return [r["id"] for r in self.records if r["status"] != DONE]


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The records of an output JSONL by input id (the last one wins); {} if there is none."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            out[rec["id"]] = rec
    return out


class _Progress(AgentCallbacks):
    """Forwards loop events to the display and to the caller's callbacks."""

    def __init__(self, display: Any, inner: AgentCallbacks | None) -> None:
        self.display = display
        self.inner = inner or AgentCallbacks()

    def on_token(self, text: str) -> None:
        self.inner.on_token(text)

    def on_turn_end(self, text: str, finish: str) -> None:
        self.inner.on_turn_end(text, finish)

    def on_tool_call(self, call: Any) -> None:
        self.display.tool_call(call)
        self.inner.on_tool_call(call)

    def on_tool_result(self, call: Any) -> None:
        self.inner.on_tool_result(call)

    def on_prefill(self, tokens: int, how: str) -> None:
        self.inner.on_prefill(tokens, how)

    def on_rollover(self, summary: str, old_session: Any, new_session: Any) -> None:
        self.display.note(f"context full: continuing in session {new_session.name} from a summary")
        self.inner.on_rollover(summary, old_session, new_session)


@contextmanager
def _sigint_stops(agent_ref: Callable[[], Agent | None], flag: threading.Event) -> Iterator[None]:
    """First Ctrl-C: stop at the next token and checkpoint; a second one: KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        agent = agent_ref()
        if agent is not None:
            agent.stop()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class TaskRunner:
    """Runs one TaskSpec on an engine; `run()` returns a RunSummary."""

    def __init__(
        self,
        spec: TaskSpec,
        engine: Any,
        store: Any,
        *,
        resume: bool = False,
        display: Any = None,
        callbacks: AgentCallbacks | None = None,
        decoder: Any = None,
    ) -> None:
        from agentrt.agent.display import NullDisplay

        self.spec = spec
        self.engine = engine
        self.store = store
        self.resume = resume
        self.display = display or NullDisplay()
        self.callbacks = _Progress(self.display, callbacks)
        if decoder is None and spec.hyper is not None:
            from agentrt.agent.hyper import ParallelDecoder

            decoder = ParallelDecoder(spec.hyper)
        self.decoder = decoder
        self.stop_flag = threading.Event()
        self.agent: Agent | None = None
        self.saved_messages: dict[str, int] = {}  # session db id -> messages written

    # -- sessions ----------------------------------------------------------------------
    def _free_name(self, base: str) -> str:
        """`base`, or `base-2`, `base-3`... when the catalog already has that name."""
        name, n = base, 1
        while True:
            try:
                self.store.get_session(name)
            except SessionError:
                return name
            n += 1
            name = f"{base}-{n}"

    def _new_agent(self, name: str) -> Agent:
        session = self.engine.new_session(self._free_name(name), seed=self.spec.sampling.seed)
        return self._agent(session, None)

    def _agent(self, session: Any, messages: list[dict[str, Any]] | None) -> Agent:
        return Agent(
            session,
            tools=self.spec.tools.registry() if self.spec.tools.enabled else None,
            tool_choice=self.spec.tools.choice if self.spec.tools.enabled else "auto",
            system=self.spec.system,
            sampling=self.spec.sampling,
            limits=self.spec.limits,
            context=self.spec.session.context,
            callbacks=self.callbacks,
            decoder=self.decoder,
            messages=messages,
            new_session=self._roll_over,
        )

    def _roll_over(self, old: Any) -> Any:
        """The context is full: checkpoint and close the old session, open its successor."""
        if self.agent is not None and self.agent.session is old:
            self.checkpoint(self.agent)
        old.close()
        base = old.name.rsplit("-cont", 1)[0]
        return self.engine.new_session(
            self._free_name(f"{base}-cont"), seed=self.spec.sampling.seed
        )

    def _open_agent(self, name: str) -> Agent:
        """Continue a saved session: its cache from the checkpoint, its messages from the catalog."""
        session = self.engine.open_session(name)
        messages = [
            {"role": m.role, "content": m.content} for m in self.store.messages(session.db_id)
        ]
        self.saved_messages[session.db_id] = len(messages)
        return self._agent(session, messages)

    def checkpoint(self, agent: Agent) -> None:
        """Save the session and append the messages its checkpoint now holds to the catalog."""
        self.engine.save(agent.session)
        db_id = agent.session.db_id
        done = self.saved_messages.get(db_id, 0)
        for m in agent.messages[done : agent.fed_messages]:
            self.store.add_message(db_id, m["role"], m["content"])
        self.saved_messages[db_id] = agent.fed_messages

    # -- the run -----------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run every input not finished yet; records, checkpoints, catalog rows."""
        spec = self.spec
        previous = read_records(spec.output) if self.resume else {}
        finished = {k: r for k, r in previous.items() if r.get("status") == DONE}
        run = self.store.runs.create_run(
            str(spec.path),
            spec.name,
            str(spec.model or "default"),
            {**spec.options, "resume": self.resume},
        )
        summary = RunSummary(run.id)
        spec.output.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in previous.values() if r.get("status") == DONE]
        spec.output.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        shared = spec.session.mode == "shared"
        last_session = next(
            (r.get("session") for r in reversed(list(previous.values())) if r.get("session")), None
        )
        status = "done"
        try:
            with _sigint_stops(lambda: self.agent, self.stop_flag):
                if shared:
                    resume_name = (
                        last_session if self.resume and last_session else spec.session.name
                    )
                    self.agent = self._start_shared(resume_name)
                self.display.start(len(spec.inputs), len(finished))
                since_save = 0
                for inp in spec.inputs:
                    if inp.id in finished:
                        item = self.store.runs.add_run_item(run.id, inp.id, status="pending")
                        self.store.runs.finish_run_item(
                            item.id, status="skipped", output=finished[inp.id]
                        )
                        summary.skipped.append(inp.id)
                        continue
                    if self.stop_flag.is_set():
                        break
                    if not shared:
                        self.agent = self._new_agent(f"{spec.session.name}-{inp.id}")
                    record = self._one(run.id, inp, self.agent)
                    summary.records.append(record)
                    if self.agent.session.name not in summary.sessions:
                        summary.sessions.append(self.agent.session.name)
                    since_save += 1
                    every = spec.session.checkpoint_every
                    if (
                        not shared
                        or record["status"] == "interrupted"
                        or (every and since_save >= every)
                    ):
                        self.checkpoint(self.agent)
                        since_save = 0
                    if not shared:
                        self.agent.session.close()
                    if record["status"] == "interrupted":
                        summary.interrupted = True
                        break
                if shared and self.agent is not None and since_save:
                    self.checkpoint(self.agent)
        except BaseException:
            status = "failed"
            raise
        finally:
            if summary.interrupted or self.stop_flag.is_set():
                summary.interrupted = True
                status = "cancelled"
            elif status != "failed" and summary.failed:
                status = "failed"
            self.store.runs.finish_run(run.id, status)
            self.display.stop()
        return summary

    def _start_shared(self, name: str) -> Agent:
        if self.resume or self.spec.session.resume:
            try:
                self.store.get_session(name)
            except SessionError:
                if self.spec.session.resume:
                    raise SessionError(
                        f"session.resume is set but there is no saved session {name!r}",
                        hint="run once without session.resume, or check `agentrt sessions ls`",
                    ) from None
            else:
                agent = self._open_agent(name)
                self.display.note(f"continuing session {name} ({agent.position} tokens)")
                return agent
        return self._new_agent(name)

    def _one(self, run_id: str, inp: InputSpec, agent: Agent) -> dict[str, Any]:
        """Run one input; write its JSONL record and its catalog item."""
        item = self.store.runs.add_run_item(run_id, inp.id, session_id=agent.session.db_id)
        self.display.begin(inp.id)
        t0 = time.monotonic()
        error = None
        if hasattr(self.decoder, "clear"):
            self.decoder.clear()
        try:
            result = agent.ask(inp.prompt)
        except SessionError as err:  # e.g. context limit with no room to summarise
            result, error = AgentResult(finish_reason="error", message=err.message), err.message
        record = self._record(inp, agent, result, time.monotonic() - t0)
        samples = self.decoder.record() if hasattr(self.decoder, "record") else None
        if samples is not None:  # hyper-scaling: the answer turn's chains and vote
            record["samples"] = samples
            if samples["n_note"]:
                self.display.note(samples["n_note"])
        with self.spec.output.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        status = {"done": "done", "interrupted": "pending"}.get(record["status"], "failed")
        if status == "pending":
            status = "failed"
        self.store.runs.finish_run_item(
            item.id,
            status=status,
            output={k: record[k] for k in ("answer", "finish_reason", "steps", "tokens")},
            error=error or (record["message"] if record["status"] != DONE else None),
            session_id=agent.session.db_id,
        )
        self.display.end(record)
        return record

    def _record(
        self, inp: InputSpec, agent: Agent, res: AgentResult, seconds: float
    ) -> dict[str, Any]:
        stats = agent.session.stats()
        status = (
            DONE if res.ok else ("interrupted" if res.finish_reason == "interrupted" else "failed")
        )
        tokens = res.prefilled_tokens + res.generated_tokens
        return {
            "id": inp.id,
            "status": status,
            "answer": res.answer.strip(),
            "finish_reason": res.finish_reason,
            "message": res.message,
            "tool_calls": [c.as_dict() for c in res.tool_calls],
            "steps": res.steps,
            "tokens": {
                "prefilled": res.prefilled_tokens,
                "generated": res.generated_tokens,
                "session": agent.position,
                "max_positions": agent.max_positions,
            },
            "kv_bytes": int(stats.get("kv_bytes", 0)),
            "compression_ratio": float(stats.get("compression_ratio", 1.0)),
            "timings": {
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            },
            "session": agent.session.name,
            "rollovers": res.rollovers,
        }


def open_engine(spec: TaskSpec, *, device: str | None = None, **engine: Any) -> Any:
    """The engine a task asks for (model, device, KV budget and dtype, DMS options or `off`);
    `engine` adds Engine options (a Ray replica passes its `home` and `db`)."""
    from agentrt import Engine

    kwargs: dict[str, Any] = {"kv_budget": spec.kv_budget, "kv_dtype": spec.kv_dtype, **engine}
    if spec.session.keep_checkpoints is not None:
        from agentrt.sessions.retention import CheckpointPolicy

        kwargs["checkpoints"] = CheckpointPolicy(keep=spec.session.keep_checkpoints)
    if spec.dms == "off":
        from agentrt.dms.policies import make_policy

        kwargs["policy"] = make_policy("dense")
    elif isinstance(spec.dms, dict):  # only the given fields change the model's own config
        kwargs["dms"] = dict(spec.dms)
    return Engine.from_pretrained(spec.model, device=device or spec.device, **kwargs)


def open_store() -> Any:
    """The catalog of the current settings (AGENTRT_HOME / AGENTRT_DB)."""
    from agentrt.sessions import SessionStore, open_catalog
    from agentrt.settings import load_settings

    return SessionStore(open_catalog(load_settings().db_url))


__all__ = ["RunSummary", "TaskRunner", "open_engine", "open_store", "read_records"]
