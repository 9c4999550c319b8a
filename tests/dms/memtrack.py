"""Peak live tensor bytes on CPU, tracked with a TorchDispatchMode (tracemalloc cannot see torch)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorBytes(TorchDispatchMode):
    """Counts every newly allocated tensor storage from creation until its tensor is collected."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self._owners: dict[int, int] = {}

    def _release(self, ptr: int) -> None:
        self.live -= self._owners.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr == 0 or ptr in self._owners:
                continue
            nbytes = t.untyped_storage().nbytes()
            self._owners[ptr] = nbytes
            self.live += nbytes
            self.largest = max(self.largest, nbytes)
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out
