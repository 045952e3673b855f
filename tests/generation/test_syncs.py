"""HostSyncCounter sees every kind of device read it claims to count, and nothing else."""

from __future__ import annotations

import torch

from nemo_automodel_bard.generation.syncs import HostSyncCounter


def test_counts_scalar_reads_data_dependent_shapes_and_tolist():
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        y = (x * 2).softmax(0)  # no sync
        torch.where(x > 2, x, 0.0).sum()  # no sync
        bool(x.sum() > 0)
        x.max().item()
        x[x > 2]
        x.nonzero()
        x.tolist()
    assert y.shape == (6,)
    assert counter.counts["aten::_local_scalar_dense"] == 2
    assert counter.counts["aten::index (bool mask)"] == 1
    assert counter.counts["aten::nonzero"] == 1
    assert counter.counts["Tensor.tolist"] == 1
    assert counter.total == 5
    assert torch.Tensor.tolist is not None and x.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # restored
    assert counter.counts["Tensor.tolist"] == 1
