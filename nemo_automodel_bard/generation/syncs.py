"""Count the operations that make the host wait for the device (tests and benchmarks).

A host sync is any op whose result the CPU must read before it can go on: a scalar read
(``.item()``, ``bool(t)``, ``int(t)`` -> ``aten._local_scalar_dense``), an op whose output
size depends on the data (``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``),
or a copy of device data to Python (``.tolist()``, which bypasses the dispatcher and is
counted by wrapping ``Tensor.tolist``). On CPU nothing actually waits, but the same code
would on a GPU, so counting on CPU tells what a CUDA run will do.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter"]

_SYNC_OPS = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else None
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices
    )


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...`` then ``c.total`` and ``c.counts`` (op name -> count)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._tolist = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self):
        original = torch.Tensor.tolist
        counts = self.counts

        def counting_tolist(tensor, *args, **kwargs):
            counts["Tensor.tolist"] += 1
            return original(tensor, *args, **kwargs)

        self._tolist = original
        torch.Tensor.tolist = counting_tolist
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in _SYNC_OPS:
            self.counts[name] += 1
        elif name in ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"):
            if _bool_index(args):
                self.counts[f"{name} (bool mask)"] += 1
        return func(*args, **(kwargs or {}))
