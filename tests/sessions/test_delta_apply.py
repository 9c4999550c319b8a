"""`apply_deltas` on synthetic cache states: exact for streams that grow, shrink and rewrite,
and a delta that does not fit its base is refused naming it."""

from __future__ import annotations

import pytest
import torch

from agentrt.errors import CheckpointError
from agentrt.sessions.delta import DeltaBase, apply_deltas

LAYERS, HEADS, HEAD_DIM, WINDOW = 2, 3, 4, 2


def random_state(gen: torch.Generator, lens: list[list[int]], like: dict | None) -> dict:
    """A valid state with these slot counts; where `like` has the same (layer, head, slot),
    half the slots keep its position and K/V (as a session's old tokens do)."""
    state: dict[str, torch.Tensor] = {}
    for layer, row in enumerate(lens):
        total = sum(row)
        k = torch.randn(total, HEAD_DIM, generator=gen)
        v = torch.randn(total, HEAD_DIM, generator=gen)
        pos = torch.randint(0, 10_000, (total,), generator=gen, dtype=torch.int32)
        expiry = torch.randint(-1, 100, (total,), generator=gen, dtype=torch.int32)
        if like is not None:
            old = [int(n) for n in like[f"layer.{layer}.lens"].tolist()]
            starts, old_starts = [0], [0]
            for a, b in zip(row, old, strict=True):
                starts.append(starts[-1] + a)
                old_starts.append(old_starts[-1] + b)
            for h in range(HEADS):
                for s in range(min(row[h], old[h])):
                    if torch.rand((), generator=gen) < 0.5:
                        i, j = starts[h] + s, old_starts[h] + s
                        for name, t in (("k", k), ("v", v), ("pos", pos)):
                            t[i] = like[f"layer.{layer}.{name}"][j]
                        if torch.rand((), generator=gen) < 0.7:
                            expiry[i] = like[f"layer.{layer}.expiry"][j]
        state.update(
            {
                f"layer.{layer}.k": k,
                f"layer.{layer}.v": v,
                f"layer.{layer}.pos": pos,
                f"layer.{layer}.expiry": expiry,
                f"layer.{layer}.lens": torch.tensor(row, dtype=torch.int32),
            }
        )
    low = min(min(row) for row in lens)
    state["ring_slot"] = torch.randint(0, max(low, 1), (LAYERS, HEADS, WINDOW + 1))
    state["ring_flag"] = torch.rand(LAYERS, HEADS, WINDOW + 1, generator=gen) < 0.5
    state["next_pos"] = torch.tensor([int(torch.randint(0, 99, (1,), generator=gen))])
    return state


def chain_of_states(seed: int, steps: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    lens = [[5, 3, 7], [2, 6, 4]]
    states = [random_state(gen, lens, None)]
    for _ in range(steps):
        # mostly grow, sometimes shrink a stream (never below 1 slot)
        lens = [
            [max(1, n + int(torch.randint(-3, 6, (1,), generator=gen))) for n in row]
            for row in lens
        ]
        states.append(random_state(gen, lens, states[-1]))
    return states


def deltas_of(states: list[dict]) -> list[dict]:
    tokens = list(range(len(states)))
    base = DeltaBase.of("c0", "s0", states[0], tokens[:1], full_bytes=1)
    out = []
    for i, state in enumerate(states[1:], start=1):
        delta = base.delta(state, tokens[: i + 1])
        assert delta is not None
        out.append(delta)
        base = base.advanced(f"c{i}", f"s{i}", state, tokens[: i + 1], delta_bytes=1, extra={})
    return out


@pytest.mark.parametrize("seed", range(6))
def test_every_prefix_of_a_chain_rebuilds_its_state_exactly(seed: int) -> None:
    states = chain_of_states(seed, 6)
    deltas = deltas_of(states)
    shrank = any(
        (b[f"layer.{l_}.lens"] < a[f"layer.{l_}.lens"]).any()
        for a, b in zip(states, states[1:], strict=False)
        for l_ in range(LAYERS)
    )
    for n in range(len(deltas) + 1):
        got = apply_deltas(states[0], deltas[:n])
        want = states[n]
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), (seed, n, name)
            assert got[name].dtype == want[name].dtype
    assert shrank or seed > 0  # seed 0 exercises a shrinking stream


def test_a_delta_that_does_not_fit_its_base_is_named() -> None:
    states = chain_of_states(7, 3)
    deltas = deltas_of(states)
    bad = dict(deltas[1])
    bad["layer.1.rows"] = bad["layer.1.rows"][:-1]  # a new slot left without its K/V
    with pytest.raises(CheckpointError, match="delta 2 of layer 1"):
        apply_deltas(states[0], [deltas[0], bad, deltas[2]])
    wrong = dict(deltas[0])
    wrong["layer.0.lens"] = torch.tensor([1, 1], dtype=torch.int32)
    with pytest.raises(CheckpointError, match="delta 1 of layer 0 has slot counts"):
        apply_deltas(states[0], [wrong])
