"""Calibration data: the batches a criterion or a curvature estimate reads, checked.

Bad calibration data does not fail on its own: an empty batch or NaN inputs give all-tied
scores, and ties prune whole layers silently.  :func:`batches` is the one place where such
data enters the library, so every criterion refuses it with an error that says how to fix
it.  A leaf module: criteria and :mod:`sparsity_lab.curvature` both read from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

Batch = tuple[torch.Tensor, torch.Tensor | None]


def batches(data: Any, limit: int | None = None, *, labels: bool = True) -> Iterator[Batch]:
    """Yield up to ``limit`` checked ``(inputs, targets)`` batches from ``data``.

    ``data`` is a DataLoader, a list of batches, or a single ``(inputs, targets)`` tuple;
    with ``labels=False`` (criteria that never read the targets) inputs alone are accepted
    too (a tensor, a tuple ``(X,)`` or a loader over ``TensorDataset(X)``) and yield
    ``(inputs, None)``; with ``labels=True`` they are refused, since the caller needs a loss.
    """
    if data is None:
        raise ValueError("this criterion needs data: pass data=(inputs, targets) or a DataLoader")
    yielded = 0
    for i, batch in enumerate(_batch_source(data)):
        if limit is not None and i >= limit:
            break
        yield _check_batch(batch, i, labels)
        yielded += 1
    if yielded == 0 and (limit is None or limit > 0):
        raise ValueError(
            "data yielded no batches: pass at least one batch, e.g. data=(inputs, targets) "
            "or a non-empty DataLoader"
        )


_EXPECTED = (
    "data must be a DataLoader, a list of batches or an (inputs, targets) tuple of batched "
    "tensors (inputs alone for criteria that need no labels)"
)


def _batch_source(data: Any) -> Iterable:
    """The batches of ``data``: a lone tensor or tuple of tensors is one batch.

    A ``Dataset`` is refused rather than batched here: iterating it yields single examples,
    which a criterion would score as batches of one (SNIP would score one example), and
    the batch size is the caller's choice.
    """
    if torch.is_tensor(data):
        return [(data,)]
    if isinstance(data, tuple) and 1 <= len(data) <= 2 and torch.is_tensor(data[0]):
        return [data]
    if isinstance(data, Dataset):
        raise TypeError(
            f"{_EXPECTED}; got a {type(data).__name__}: wrap it in "
            f"DataLoader(dataset, batch_size=...)"
        )
    if not isinstance(data, Iterable):
        raise TypeError(f"{_EXPECTED}; got a {type(data).__name__}")
    return data


def _check_batch(batch: Any, i: int, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets or None)`` of batch ``i``, or an error saying how to fix it."""
    if torch.is_tensor(batch):
        batch = (batch,)
    if not isinstance(batch, (tuple, list)) or not 1 <= len(batch) <= 2:
        raise TypeError(
            f"{_EXPECTED}; batch {i} is a {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x, y = batch[0], (batch[1] if len(batch) == 2 else None)
    if not torch.is_tensor(x) or (y is not None and not torch.is_tensor(y)):
        raise TypeError(f"{_EXPECTED}; batch {i} holds a non-tensor")
    if x.ndim == 0 or (y is not None and y.ndim == 0):
        raise ValueError(
            f"batch {i} is a single unbatched example (a 0-d tensor); {_EXPECTED}: "
            f"wrap a dataset in DataLoader(dataset, batch_size=...)"
        )
    if len(x) == 0:
        raise ValueError(
            f"batch {i} has 0 examples, which would give every weight the same score; "
            f"pass batches with at least one example (check the split and the slicing)"
        )
    if y is not None and len(y) != len(x):
        raise ValueError(
            f"batch {i} has {len(x)} inputs but {len(y)} targets; pass one target per input"
        )
    for what, t in (("inputs", x), ("targets", y)):
        if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(
                f"batch {i} has non-finite (NaN or inf) {what}, which would give every "
                f"weight the same score; clean or impute the data before pruning"
            )
    if y is None and labels:
        raise ValueError(
            f"batch {i} has inputs but no targets, and this criterion computes a loss: pass "
            f"data=(inputs, targets) or a DataLoader over TensorDataset(inputs, targets) "
            f"(label-free criteria such as wanda, sparsegpt or apoz accept inputs alone)"
        )
    return x, y
