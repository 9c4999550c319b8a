"""Eval tests run torch single-threaded: tiny models gain nothing from threads, and on a shared
two-core machine OpenMP's spinning turns every small op into milliseconds. Restored after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="package")
def single_thread_torch() -> Iterator[None]:
    """torch.set_num_threads(1) for this package's tests, then the previous value."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
