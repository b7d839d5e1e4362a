"""Accounting: what a pruned model holds, computes and stores, per layer and in total.

FLOPs count the multiply-adds of each layer's weight as 2 operations per example: a dense
layer does ``2 * weight.numel() * positions`` and a masked one ``2 * nonzeros * positions``,
where ``positions`` is the number of places the weight is applied (1 for a Linear on a
vector, the output length or area for a Conv).  A bias, when reported, counts one add per
element and position.  Activations and attention's score products are not counted; an
embedding is a lookup and costs 0.  :func:`counted_flops` is the independent count of
``torch.utils.flop_counter``: the same total on MLPs and CNNs, and more on a transformer,
whose attention products it counts too.

Bytes: each pattern has a *natural storage*, the format that exploits its structure
(:func:`storage_bytes`).  With ``v`` bytes per value and ``i`` bytes per index, for a weight
seen as an ``R x K`` matrix (outputs x inputs*kernel; an embedding is vocabulary x dim):

==================  ==========  ===================================================
pattern             storage     bytes
==================  ==========  ===================================================
None (dense)        dense       ``R K v``
unstructured        csr         ``nnz (v + i) + (R + 1) i``: values, column indices,
                                row pointers (BSR with 1 x 1 blocks)
N:M                 nm N:M      ``kept v + ceil(kept ceil(log2 M) / 8)``, ``kept =
                                R K N / M``: values plus ``ceil(log2 M)`` bits of
                                position per value (2 bits for 2:4)
block r x c         bsr r x c   ``b (r c v + i) + (R / r + 1) i``, ``b`` blocks holding
                                a nonzero: whole blocks, a column index per block,
                                row pointers per block row
kernel              bsr 1 x k   ``b (k v + i) + (R + 1) i``, ``b`` kernels holding a
                                nonzero, ``k`` = kernel size: BSR with 1 x k blocks
embedding           bsr 1 x d   ``b (d v + i) + (R + 1) i``, ``b`` token rows holding
                                a nonzero: BSR with 1 x d blocks
channel, input,     shrunk      ``r' c' k v``: the dense tensor left after physical
head, layer                     removal, ``r'`` rows and ``c'`` input channels holding
                                a nonzero, ``k`` = kernel size (1 for a Linear)
==================  ==========  ===================================================

``nnz`` counts the nonzeros.  A tensor without zeros is stored dense, whatever the pattern.
The closed forms are those of :func:`bsr_bytes`, :func:`nm_bytes` and :func:`shrunk_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import masks
from . import patterns as patterns_mod
from .modes import evaluating
from .targets import default_targets

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = [
    "name",
    "shape",
    "parameters",
    "nonzeros",
    "sparsity",
    "dense_flops",
    "sparse_flops",
    "storage",
    "dense_bytes",
    "bytes",
]

PatternSpec = str | patterns_mod.Pattern | None

# Patterns whose natural storage is the dense tensor left after physical removal.
_SHRUNK = ("channel", "input", "head", "layer")


def make_example_input(model: nn.Module) -> torch.Tensor:
    """A one-example zero input from ``model.input_shape`` (token ids if it embeds tokens)."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "cannot infer an input for FLOPs: pass example_input=... or give the model an "
            "`input_shape` attribute (the bundled models have one)"
        )
    embeds = any(isinstance(m, nn.Embedding) for m in model.modules())
    return torch.zeros(1, *shape, dtype=torch.long if embeds else torch.float32)


def positions(model: nn.Module, x: torch.Tensor, names: Iterable[str]) -> dict[str, int]:
    """For each tensor name, how many times per example its layer applies the tensor."""
    found: dict[str, int] = {}
    handles = []
    wanted: dict[str, list[str]] = {}
    for n in names:
        wanted.setdefault(n.rpartition(".")[0], []).append(n)
    for path, module in model.named_modules():
        if path in wanted:

            def hook(mod, inp, out, tensor_names=tuple(wanted[path])):
                if isinstance(mod, nn.Embedding):  # a lookup: no multiply-adds
                    found.update(dict.fromkeys(tensor_names, 0))
                    return
                conv = isinstance(mod, nn.modules.conv._ConvNd)
                channels = out.shape[1] if conv else out.shape[-1]
                for name in tensor_names:
                    found[name] = out.numel() // (out.shape[0] * channels)

            handles.append(module.register_forward_hook(hook))
    try:
        with evaluating(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _flops(numel: int, ndim: int, positions: int | None) -> float:
    # A weight does a multiply and an add per element and position; a bias only an add.
    if positions is None:
        return float("nan")
    return (2 if ndim > 1 else 1) * numel * positions


def counted_flops(model: nn.Module, example_input: torch.Tensor | None = None) -> float:
    """Dense forward FLOPs per example as ``torch.utils.flop_counter`` counts them.

    It counts every matrix product and convolution (attention's included) at 2 FLOPs per
    multiply-add, and no bias or activation; masks do not change it (a masked weight still
    multiplies).  ``example_input`` defaults to one example of ``model.input_shape``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = make_example_input(model) if example_input is None else example_input
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / x.shape[0]


# ------------------------------------------------------------------------------------ bytes


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight as an R x K matrix (outputs x inputs*kernel); a vector is one row."""
    return weight.reshape(1, -1) if weight.dim() < 2 else weight.reshape(weight.shape[0], -1)


def bsr_bytes(
    weight: torch.Tensor, rows: int, cols: int, *, value_bytes: int = 4, index_bytes: int = 4
) -> int:
    """Bytes of block-sparse rows storage with ``rows x cols`` blocks (CSR when 1 x 1).

    ``kept_blocks * (rows*cols*value_bytes + index_bytes) + (R/rows + 1) * index_bytes``: the
    values of every block holding a nonzero, a block column index per kept block, and one
    row pointer per block row plus one, as torch's ``to_sparse_bsr`` stores them.
    """
    matrix = _matrix(weight)
    r, k = matrix.shape
    if r % rows or k % cols:
        raise ValueError(
            f"{rows}x{cols} blocks do not tile a {r}x{k} matrix; choose a block size that "
            f"divides both sides"
        )
    tiles = (matrix != 0).reshape(r // rows, rows, k // cols, cols)
    kept = int(tiles.any(dim=3).any(dim=1).sum())
    return kept * (rows * cols * value_bytes + index_bytes) + (r // rows + 1) * index_bytes


def nm_bytes(
    weight: torch.Tensor, n: int, m: int, *, value_bytes: int = 4, index_bytes: int = 4
) -> int:
    """Bytes of N:M storage: ``N`` values of every group of ``M`` plus their positions.

    Each kept value carries ``ceil(log2 M)`` bits of metadata (2 bits for 2:4, NVIDIA's
    convention), so the total is ``kept * value_bytes + ceil(kept * ceil(log2 M) / 8)``
    with ``kept = numel * N / M``.  ``index_bytes`` is unused: the metadata is sub-byte.
    A tensor with more than ``N`` nonzeros in a group is not N:M sparse and is refused.
    """
    pattern = patterns_mod.NM(n, m)
    pattern.validate(tuple(weight.shape), "weight")
    alive = pattern._grouped((weight != 0).to(torch.int64)).sum(dim=1)
    if int(alive.max()) > n:
        raise ValueError(
            f"the tensor is not {n}:{m} sparse: a group of {m} holds {int(alive.max())} "
            f"nonzeros; prune it with pattern '{n}:{m}' or account for it as 'unstructured'"
        )
    kept = weight.numel() // m * n
    return kept * value_bytes + math.ceil(kept * math.ceil(math.log2(m)) / 8)


def shrunk_bytes(weight: torch.Tensor, *, value_bytes: int = 4) -> int:
    """Bytes of the dense tensor spanned by the rows and input channels holding a nonzero.

    ``rows * in_channels * prod(kernel) * value_bytes``: what is left of this tensor once
    zero output units and zero input units are removed physically.
    """
    nonzero = weight != 0
    if weight.dim() < 2:
        return int(nonzero.sum()) * value_bytes
    rows = int(nonzero.flatten(1).any(dim=1).sum())
    inputs = int(nonzero.transpose(0, 1).flatten(1).any(dim=1).sum())
    return rows * inputs * math.prod(weight.shape[2:]) * value_bytes


def storage_scheme(pattern: PatternSpec, shape: tuple[int, ...] | None = None) -> str:
    """Name of ``pattern``'s natural storage: dense, csr, bsr RxC, nm N:M or shrunk."""
    if pattern is None:
        return "dense"
    pat = patterns_mod.get(pattern)
    if pat.name == "unstructured":
        return "csr"
    if pat.name == "nm":
        return f"nm {pat.n}:{pat.m}"
    if pat.name == "block":
        return f"bsr {pat.rows}x{pat.cols}"
    if pat.name == "kernel":
        return "bsr 1xk" if shape is None else f"bsr 1x{math.prod(shape[2:])}"
    if pat.name == "embedding":
        return "bsr 1xd" if shape is None else f"bsr 1x{shape[1]}"
    if pat.name in _SHRUNK:
        return "shrunk"
    raise ValueError(
        f"no natural storage is defined for pattern {pat!r}; use one of unstructured, nm, "
        f"block, kernel, embedding, {', '.join(_SHRUNK)}, or None (dense)"
    )


def storage_bytes(
    weight: torch.Tensor, pattern: PatternSpec = None, *, value_bytes: int = 4, index_bytes: int = 4
) -> int:
    """Bytes of ``weight`` in ``pattern``'s natural storage (module docstring has the table).

    ``pattern=None`` means dense.  A tensor without zeros is stored dense whatever the
    pattern.  A pattern that does not fit the tensor's shape raises its ValueError.
    """
    weight = weight.detach()
    dense = weight.numel() * value_bytes
    if pattern is None or bool((weight != 0).all()):
        return dense
    pat = patterns_mod.get(pattern)
    pat.validate(tuple(weight.shape), "weight")
    scheme = storage_scheme(pat, tuple(weight.shape))
    sizes = {"value_bytes": value_bytes, "index_bytes": index_bytes}
    if scheme == "csr":
        return bsr_bytes(weight, 1, 1, **sizes)
    if scheme.startswith("nm"):
        return nm_bytes(weight, pat.n, pat.m, **sizes)
    if scheme == "shrunk":
        return shrunk_bytes(weight, value_bytes=value_bytes)
    if pat.name == "block":
        return bsr_bytes(weight, pat.rows, pat.cols, **sizes)
    width = math.prod(weight.shape[2:]) if pat.name == "kernel" else weight.shape[1]
    return bsr_bytes(weight, 1, width, **sizes)


def report(
    model: nn.Module,
    names: Iterable[str] | None = None,
    example_input: torch.Tensor | None = None,
    *,
    pattern: PatternSpec | Mapping[str, PatternSpec] = None,
    value_bytes: int = 4,
    index_bytes: int = 4,
) -> pd.DataFrame:
    """One row per pruned tensor, plus a ``total`` row.

    Columns: name, shape, parameters, nonzeros, sparsity, dense_flops, sparse_flops (per
    example; NaN where no input could be built), then storage (the scheme), dense_bytes
    and bytes (in ``pattern``'s natural storage, see :func:`storage_bytes`).  ``names``
    defaults to every Linear/Conv weight and every masked tensor.  ``pattern`` is one
    pattern (or spec) for every tensor, a ``{name: pattern}`` dict (missing names are
    dense), or None for dense storage.
    """
    if names is None:
        names = list(dict.fromkeys(default_targets(model) + list(masks.masks(model))))
    names = list(names)
    x = example_input
    if x is None and hasattr(model, "input_shape"):
        x = make_example_input(model)
    if x is not None and x.shape[0] != 1:
        x = x[:1]
    pos = positions(model, x, names) if x is not None else {}
    rows = []
    for n in names:
        w = masks.weight(model, n).detach()
        nnz = int(w.count_nonzero())
        p = pos.get(n)
        pat = pattern.get(n) if isinstance(pattern, Mapping) else pattern
        if w.dim() < 2:  # a bias: no pattern groups it, it is stored dense
            pat = None
        scheme = "dense" if nnz == w.numel() else storage_scheme(pat, tuple(w.shape))
        try:
            stored = storage_bytes(w, pat, value_bytes=value_bytes, index_bytes=index_bytes)
        except ValueError as err:
            raise ValueError(f"{n}: {err}") from err
        rows.append(
            {
                "name": n,
                "shape": tuple(w.shape),
                "parameters": w.numel(),
                "nonzeros": nnz,
                "sparsity": 1 - nnz / w.numel(),
                "dense_flops": _flops(w.numel(), w.dim(), p),
                "sparse_flops": _flops(nnz, w.dim(), p),
                "storage": scheme,
                "dense_bytes": w.numel() * value_bytes,
                "bytes": stored,
            }
        )
    import pandas as pd  # a heavy import that only a report needs

    df = pd.DataFrame(rows, columns=COLUMNS)
    total = {
        "name": "total",
        "shape": None,
        "parameters": int(df["parameters"].sum()),
        "nonzeros": int(df["nonzeros"].sum()),
        "dense_flops": df["dense_flops"].sum(min_count=len(df)),
        "sparse_flops": df["sparse_flops"].sum(min_count=len(df)),
        "storage": None,
        "dense_bytes": int(df["dense_bytes"].sum()),
        "bytes": int(df["bytes"].sum()),
    }
    total["sparsity"] = 1 - total["nonzeros"] / max(1, total["parameters"])
    return pd.concat([df, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
