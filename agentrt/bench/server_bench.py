"""`agentrt bench server`: turn latency of a long conversation, sessions on vs history re-sent.

Both sides run the same in-process server on loopback: "sessions" chains `/v1/responses`
with `previous_response_id` (only the new turn is prefilled); "resend" posts the whole
history to `/v1/chat/completions` on a server whose prefix reuse is off (every turn
prefills everything), as a stateless client of a stateless server would.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

QUESTION = "Turn {i}: summarise what we said so far in one short sentence."


class _Server:
    def __init__(self, engine: Any, **options: Any) -> None:
        import uvicorn

        from agentrt.server import create_app

        self.app = create_app(engine, model_name="bench", **options)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def _sessions(server: _Server, turns: int, max_tokens: int, tick: Callable[[], None]) -> list[dict]:
    rows, prev = [], None
    for i in range(turns):
        t0 = time.perf_counter()
        r = server.post(
            "/responses",
            {
                "model": "bench",
                "input": QUESTION.format(i=i),
                "previous_response_id": prev,
                "max_output_tokens": max_tokens,
                "temperature": 0,
            },
        )
        u = r["usage"]
        prefilled = u["input_tokens"] - u["input_tokens_details"]["cached_tokens"]
        rows.append(
            {
                "seconds": time.perf_counter() - t0,
                "prefilled": prefilled,
                "input": u["input_tokens"],
            }
        )
        prev = r["id"]
        tick()
    return rows


def _resend(server: _Server, turns: int, max_tokens: int, tick: Callable[[], None]) -> list[dict]:
    rows, messages = [], []
    for i in range(turns):
        messages.append({"role": "user", "content": QUESTION.format(i=i)})
        t0 = time.perf_counter()
        r = server.post(
            "/chat/completions",
            {"model": "bench", "messages": messages, "max_tokens": max_tokens, "temperature": 0},
        )
        u = r["usage"]
        prefilled = u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"]
        rows.append(
            {
                "seconds": time.perf_counter() - t0,
                "prefilled": prefilled,
                "input": u["prompt_tokens"],
            }
        )
        messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})
        tick()
    return rows


def _summary(rows: list[dict]) -> dict[str, Any]:
    secs = [r["seconds"] for r in rows]
    return {
        "turn_seconds_mean": statistics.fmean(secs),
        "turn_seconds_median": statistics.median(secs),
        "last_turn_seconds": secs[-1],
        "total_seconds": sum(secs),
        "prefilled_tokens": sum(r["prefilled"] for r in rows),
        "last_input_tokens": rows[-1]["input"],
        "turns": rows,
    }


def run_server_bench(
    make_engine: Callable[[], Any], *, turns: int = 50, max_tokens: int = 16
) -> dict[str, Any]:
    """Time `turns` turns both ways, each on a fresh engine from `make_engine`; returns the numbers."""
    from rich.progress import Progress

    out: dict[str, Any] = {"turns": turns, "max_tokens": max_tokens}
    with Progress(transient=True) as progress:
        for label, fn, options in (
            ("sessions", _sessions, {}),
            ("resend", _resend, {"max_cached_sessions": 0}),
        ):
            task = progress.add_task(f"{label}: {turns} turns", total=turns)
            server = _Server(make_engine(), **options)
            try:
                out[label] = _summary(
                    fn(server, turns, max_tokens, lambda t=task: progress.advance(t))
                )
            finally:
                server.stop()
    out["speedup_mean_turn"] = (
        out["resend"]["turn_seconds_mean"] / out["sessions"]["turn_seconds_mean"]
    )
    return out


def format_table(result: dict[str, Any]) -> str:
    """A small text table of the two runs."""
    lines = ["mode      mean turn s  median s  last turn s  prefilled tokens  last input tokens"]
    for label in ("sessions", "resend"):
        r = result[label]
        lines.append(
            f"{label:<9} {r['turn_seconds_mean']:>11.3f} {r['turn_seconds_median']:>9.3f} "
            f"{r['last_turn_seconds']:>12.3f} {r['prefilled_tokens']:>17} {r['last_input_tokens']:>18}"
        )
    lines.append(f"resend / sessions mean turn latency: {result['speedup_mean_turn']:.2f}x")
    return "\n".join(lines)
