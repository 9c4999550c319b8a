"""The agent loop on a real tiny model: deltas only, tool calls, limits, resume, context limit."""

from __future__ import annotations

import pytest

from agentrt import Engine
from agentrt.agent import Agent, AgentCallbacks, ContextPolicy, Limits
from agentrt.agent.loop import generate_decoder
from agentrt.engine import SamplingParams
from agentrt.errors import SessionError
from agentrt.tools import PermissionPolicy, builtin_registry
from tests.agent.helpers import chat_model

CALC = '<tool_call>[{"name": "calculator", "arguments": {"expression": "%d * 7"}}]</tool_call>'


def _engine(tmp_path, model):
    home = tmp_path / "home"
    return Engine(model, num_blocks=6000, block_size=8, home=home, db=f"sqlite:///{home / 'a.db'}")


def _tools(tmp_path):
    (tmp_path / "ws").mkdir(exist_ok=True)
    (tmp_path / "ws" / "notes.txt").write_text("The access code is 7341.\n")
    return builtin_registry(PermissionPolicy(tmp_path / "ws"))


class Script:
    """A decode step: scripted turns (text → replayed through the real session) or None (generate)."""

    def __init__(self, tokenizer, turns, start: int = 0) -> None:
        self.tok = tokenizer
        self.turns = turns
        self.calls = start
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, session, params):
        turn = self.turns[self.calls % len(self.turns)]
        self.calls += 1
        if turn is None:
            return generate_decoder(session, params)
        ids = self.tok.encode(turn, add_special_tokens=False) + [self.end]
        session.prefill(ids)
        return iter(ids)


class Recorder(AgentCallbacks):
    def __init__(self) -> None:
        self.prefills: list[tuple[int, str]] = []
        self.calls: list = []
        self.results: list = []
        self.tokens: list[str] = []
        self.rollovers: list = []

    def on_prefill(self, tokens, how):
        self.prefills.append((tokens, how))

    def on_tool_call(self, call):
        self.calls.append(call)

    def on_tool_result(self, call):
        self.results.append(call)

    def on_token(self, text):
        self.tokens.append(text)

    def on_rollover(self, summary, old, new):
        self.rollovers.append((summary, old.name, new.name))


def _turns():
    """Twenty user turns: a tool call and its answer, or a real greedy reply (4 tokens, cut)."""
    out = []
    for i in range(20):
        out += [CALC % i, f"Answer: {i * 7}"] if i % 2 == 0 else [None]
    return out


def _agent(session, tmp_path, decoder, rec=None, messages=None):
    return Agent(
        session,
        tools=_tools(tmp_path),
        system="Use the calculator.",
        sampling=SamplingParams(max_new_tokens=4),
        limits=Limits(max_new_tokens=4, max_steps=3),
        callbacks=rec,
        decoder=decoder,
        messages=messages,
    )


def test_twenty_turns_prefill_only_the_new_tokens_and_resume_identically(tmp_path):
    """Prefilled tokens = each turn's new tokens; the cache holds the rendered chat exactly once;
    the same conversation saved and reopened midway continues to identical tokens."""
    model = chat_model("smollm2")
    tok = model.tokenizer
    eng = _engine(tmp_path, model)
    rec = Recorder()
    script = Script(tok, _turns())
    agent = _agent(eng.new_session("full"), tmp_path, script, rec)
    generated = 0
    for i in range(20):
        res = agent.ask(f"Question {i}: what is {i} times 7?")
        assert res.ok, res
        generated += res.generated_tokens
        if i % 2 == 0:
            assert [c.name for c in res.tool_calls] == ["calculator"]
            assert res.tool_calls[0].result == str(i * 7)
            assert res.answer == f"Answer: {i * 7}"
    s = agent.session
    # exactly the new tokens: what the loop prefilled + what the model produced = what the cache holds
    prefilled = sum(n for n, _ in rec.prefills)
    assert prefilled + generated == s.position == len(agent.ids)
    assert len(rec.prefills) == 30  # 20 user turns + 10 tool turns, one prefill each
    assert s.counters["prefill_tokens"] + s.counters["decode_tokens"] == len(s.tokens)
    # the cache holds the conversation as the template renders it (last turn not closed yet)
    full = agent.chat.render(agent.messages, add_generation_prompt=False)
    cached = agent.chat.decode(agent.ids)
    assert full.startswith(cached) and full[len(cached) :] in ("\n", "<|im_end|>\n")
    assert rec.calls[0].arguments == {"expression": "0 * 7"}

    # the same conversation, saved after 10 turns and reopened in a new engine
    eng2 = _engine(tmp_path / "b", chat_model("smollm2"))
    script2 = Script(tok, _turns())
    half = _agent(eng2.new_session("half"), tmp_path, script2)
    for i in range(10):
        half.ask(f"Question {i}: what is {i} times 7?")
    eng2.save(half.session)
    messages = list(half.messages)
    calls_done = script2.calls
    eng2.close()
    eng3 = _engine(tmp_path / "b", chat_model("smollm2"))
    reopened = eng3.open_session("half")
    cont = _agent(reopened, tmp_path, Script(tok, _turns(), start=calls_done), messages=messages)
    for i in range(10, 20):
        cont.ask(f"Question {i}: what is {i} times 7?")
    assert cont.ids == agent.ids
    assert list(reopened.tokens) == list(s.tokens)


def test_malformed_and_unknown_calls_go_back_as_errors(tmp_path):
    """A bad call is answered with an error tool message; the loop goes on to an answer."""
    model = chat_model("hermes")
    eng = _engine(tmp_path, model)
    turns = [
        "<tool_call>{not json</tool_call>",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "read_file", "arguments": {"path": "../../etc/passwd"}}</tool_call>',
        '<tool_call>{"name": "read_file", "arguments": {"path": "notes.txt"}}</tool_call>',
        "The code is 7341.",
    ]
    agent = _agent(eng.new_session(), tmp_path, Script(model.tokenizer, turns))
    agent.limits = Limits(max_new_tokens=64, max_steps=6)
    res = agent.ask("What is the access code?")
    assert res.finish_reason == "answer" and res.answer == "The code is 7341."
    errors = [c.error for c in res.tool_calls]
    assert "not valid JSON" in errors[0]
    assert "unknown tool 'rm_rf'" in errors[1]
    assert "outside the workspace" in errors[2]
    assert errors[3] is None and "7341" in res.tool_calls[3].result
    tool_msgs = [m for m in agent.messages if m["role"] == "tool"]
    assert tool_msgs[0]["content"].startswith("error: tool call is not valid JSON")


def test_step_limit_still_ends_with_an_answer(tmp_path):
    """A model that keeps calling tools is stopped after max_steps turns, told so, and answers."""
    model = chat_model("smollm2")
    eng = _engine(tmp_path, model)
    agent = _agent(eng.new_session(), tmp_path, Script(model.tokenizer, [CALC % 1]))
    agent.limits = Limits(max_new_tokens=64, max_steps=3)
    res = agent.ask("Loop forever")
    assert res.finish_reason == "max_steps" and res.steps == 3 and res.ok
    assert len(res.tool_calls) == 2  # the last turn's call is not run
    assert "step limit reached" in agent.messages[-2]["content"]


def test_no_tool_call_is_the_final_answer_and_tokens_stream(tmp_path):
    """Real greedy generation: without a tool call the reply is the answer; tokens stream."""
    model = chat_model("smollm2")
    eng = _engine(tmp_path, model)
    rec = Recorder()
    agent = Agent(
        eng.new_session(),
        sampling=SamplingParams(max_new_tokens=6),
        limits=Limits(max_new_tokens=6),
        callbacks=rec,
    )
    res = agent.ask("Hello")
    assert res.finish_reason == "answer" and res.generated_tokens == 6
    assert "".join(rec.tokens) == model.tokenizer.decode(agent.ids[-6:], skip_special_tokens=True)


def test_context_limit_stops_with_a_clear_message(tmp_path):
    """Near max_position_embeddings the loop stops and says why; the engine refuses to run past it."""
    model = chat_model("smollm2", max_positions=160)
    eng = _engine(tmp_path, model)
    agent = Agent(
        eng.new_session(),
        sampling=SamplingParams(max_new_tokens=16),
        limits=Limits(max_new_tokens=16),
    )
    results = [agent.ask("Tell me more about the quick brown fox. " * 2) for _ in range(8)]
    last = results[-1]
    assert last.finish_reason == "context_limit"
    assert "max_position_embeddings" in last.message and "160" in last.message
    assert agent.position <= 160 and agent.session.position <= 160
    with pytest.raises(SessionError, match="max_position_embeddings"):
        agent.session.prefill([5] * (161 - agent.session.position))


def test_context_limit_rolls_over_to_a_summary_session(tmp_path):
    """on_context_limit=summarize: the model summarises, a new session continues from it."""
    model = chat_model("smollm2", max_positions=700)
    eng = _engine(tmp_path, model)
    rec = Recorder()
    agent = Agent(
        eng.new_session("long"),
        system="Be brief.",
        sampling=SamplingParams(max_new_tokens=8),
        limits=Limits(max_new_tokens=8),
        context=ContextPolicy(on_limit="summarize", summary_tokens=8),
        callbacks=rec,
        new_session=lambda old: eng.new_session(old.name + "-cont"),
    )
    results = [agent.ask("Tell me more about the quick brown fox.") for _ in range(14)]
    assert all(r.ok for r in results), [r.message for r in results]
    assert sum(r.rollovers for r in results) >= 1 and rec.rollovers
    assert agent.session.name.startswith("long-cont")
    assert "Summary of the conversation so far" in agent.messages[0]["content"]
    assert max(agent.position, *(s.position for s in eng.sessions.values())) <= 700


@pytest.mark.parametrize("template", ["smollm2", "hermes"])
def test_tool_choice_starts_the_first_turn_with_the_call(tmp_path, template):
    """tool_choice=NAME: the first turn begins with that tool's call (fed, not sampled)."""
    model = chat_model(template)
    eng = _engine(tmp_path, model)
    agent = Agent(
        eng.new_session(),
        tools=_tools(tmp_path),
        tool_choice="read_file",
        sampling=SamplingParams(max_new_tokens=4),
        limits=Limits(max_new_tokens=4, max_steps=2),
    )
    res = agent.ask("What is in notes.txt?")
    first = next(m for m in agent.messages if m["role"] == "assistant")["content"]
    opening = "<tool_call>[" if template == "smollm2" else "<tool_call>\n"
    assert first.startswith(opening + '{"name": "read_file", "arguments": {"path": "')
    assert res.tool_calls  # parsed (valid or not) and answered
    agent._check_cache()
    with pytest.raises(Exception, match="tool_choice"):
        Agent(eng.new_session(), tools=_tools(tmp_path), tool_choice="python_eval")


def test_the_engine_never_runs_past_the_trained_positions(tmp_path):
    """Prefill past max_position_embeddings is refused; generation stops at the last position."""
    eng = _engine(tmp_path, chat_model("smollm2", max_positions=64))
    s = eng.new_session()
    with pytest.raises(SessionError, match="64 positions"):
        s.prefill(list(range(3, 68)))  # 65 tokens
    assert s.position == 0 and s.max_positions == 64
    s.prefill(list(range(3, 63)))  # 60 tokens
    out = list(s.generate(10, ignore_eos=True))
    assert len(out) == 4 and s.position == 64
    with pytest.raises(SessionError, match="max_position_embeddings"):
        list(s.generate(1))
