"""Storage formats of a sparse tensor and their exact size in bits (survey sections 2.2 and 7).

A sparse tensor is stored as its nonzero *values* plus *index* data that says where they
are.  Each format here encodes any tensor into plain arrays (:class:`Encoded`), decodes it
back exactly, and counts its size in bits for a value width ``k`` (``value_bits``) and an
index width ``b`` (``index_bits``).  ``index_bits=None`` means *minimal* widths: every
index array uses ``ceil(log2 R)`` bits per entry, ``R`` being the number of values that
array can hold (the survey's dimension-aware accounting); an integer means fixed-width
words (64 for torch's int64 indices).

With ``n`` elements, ``m`` nonzeros, an ``n_r x n_c`` matrix view (outputs x the rest) and
``w(R) = ceil(log2 R)`` (or ``b``):

=============  ===========================================================================
dense          ``n k``
bitmap         ``n + m k``: one bit per element, then the nonzero values
coo            ``m (k + w(n))``: one coordinate tuple per nonzero; packed minimally the
               tuple is one offset in ``[0, n)``; fixed-width it is ``ndim`` words, as in
               torch's COO (``m (k + ndim b)``)
csr            ``m (k + w(n_c)) + (n_r + 1) w(m + 1)``: values, column indices, row pointers
csc            ``m (k + w(n_r)) + (n_c + 1) w(m + 1)``: the transpose of csr
bsr (r x c)    ``B (r c k + w(n_c / c)) + (n_r / r + 1) w(B + 1)`` for ``B`` blocks holding
               a nonzero: csr over blocks
rle            ``m' (k + w(d))``: each nonzero with the run of zeros before it.  Minimal
               width: ``d = d_max``, the largest gap between consecutive nonzeros
               (``m' = m``).  Fixed width ``b`` (zero-padded delta, Han 2016): a run longer
               than ``2^b - 1`` is split by filler zeros, ``m' = m + sum_j floor(r_j / 2^b)``
ell            ``n_r K (k + w(n_c))``: every row padded to ``K``, the most nonzeros of a row
nm_format      ``(n N / M)(k + ceil(log2 M))``: N values and their positions in every group
               of M along the input dimension (2 bits per kept value for 2:4)
=============  ===========================================================================

The survey writes the CSR row pointers as ``n_r ceil(log2 m)``; the count above is the exact
one (``n_r + 1`` pointers, each in ``[0, m]``), which is also what torch stores.  With
``value_bits = 8 * element_size`` and ``index_bits = 64`` the sizes of coo, csr, csc and bsr
equal the bytes of torch's ``to_sparse_coo/csr/csc/bsr`` tensors times 8
(:func:`torch_bits`).

:func:`crossover` measures every format on random tensors across sparsities, and
:func:`plot_crossover` draws the survey's picture of which format is smallest where.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch

from .patterns import NM, check_sparsity, prune_lowest
from .registry import get as registry_get
from .registry import register

__all__ = [
    "Encoded",
    "Format",
    "Dense",
    "Bitmap",
    "COO",
    "CSR",
    "CSC",
    "BSR",
    "RLE",
    "ELL",
    "NMFormat",
    "get",
    "bits",
    "torch_bits",
    "crossover",
    "smallest",
    "plot_crossover",
]


def width(n_values: int, index_bits: int | None) -> int:
    """Bits of one index that can take ``n_values`` values: ``ceil(log2 n_values)`` or fixed.

    A fixed ``index_bits`` too narrow for ``n_values`` raises, since the indices would not fit.
    """
    minimal = math.ceil(math.log2(n_values)) if n_values > 1 else 0
    if index_bits is None:
        return minimal
    if index_bits < minimal:
        raise ValueError(
            f"index_bits={index_bits} cannot hold {n_values} distinct indices (needs "
            f"{minimal}); pass a wider index_bits or None for minimal widths"
        )
    return int(index_bits)


def _matrix(t: torch.Tensor) -> torch.Tensor:
    """The tensor as an ``n_r x n_c`` matrix: outputs x the rest; a vector is one row."""
    return t.reshape(1, -1) if t.dim() < 2 else t.reshape(t.shape[0], -1)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(n_r, n_c)`` of :func:`_matrix` for a tensor of ``shape``."""
    if len(shape) < 2:
        return 1, math.prod(shape)
    return shape[0], math.prod(shape[1:])


def _pointers(counts: torch.Tensor) -> torch.Tensor:
    """Compressed pointers: ``[0, c0, c0 + c1, ...]`` (int64, like torch's crow indices)."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int64)


@dataclass
class Encoded:
    """A tensor in one format: its ``values``, its ``index`` arrays and what rebuilds it.

    ``shape`` and ``dtype`` are those of the original tensor; ``meta`` holds the few integers
    a format needs besides its arrays (block size, N:M, index width).  They are a fixed
    header and are not counted in the size.
    """

    format: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    values: torch.Tensor
    index: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Format:
    """A storage format: :meth:`encode`, :meth:`decode` and :meth:`size_bits`.

    Subclasses implement the three; :meth:`bits` encodes a tensor and counts its size.
    """

    name: ClassVar[str] = ""

    def encode(self, tensor: torch.Tensor, *, index_bits: int | None = None) -> Encoded:
        """Encode ``tensor``.  ``index_bits`` matters only to formats whose layout depends
        on it (rle's fillers)."""
        raise NotImplementedError

    def decode(self, enc: Encoded) -> torch.Tensor:
        """The dense tensor ``enc`` stores, exactly."""
        raise NotImplementedError

    def size_bits(self, enc: Encoded, value_bits: int, index_bits: int | None) -> int:
        """Exact size of ``enc``'s arrays in bits (see the module docstring's table)."""
        raise NotImplementedError

    def bits(
        self, tensor: torch.Tensor, *, value_bits: int | None = None, index_bits: int | None = None
    ) -> int:
        """Size of ``tensor`` in this format, in bits.

        ``value_bits`` defaults to the tensor's element size; ``index_bits=None`` means
        minimal index widths, an integer fixed-width indices.
        """
        if value_bits is None:
            value_bits = 8 * tensor.element_size()
        if value_bits <= 0 or (index_bits is not None and index_bits <= 0):
            raise ValueError(
                f"value_bits and index_bits must be positive, got {value_bits} and {index_bits}"
            )
        return self.size_bits(self.encode(tensor, index_bits=index_bits), value_bits, index_bits)

    def _check(self, enc: Encoded) -> None:
        if enc.format != self.name:
            raise ValueError(
                f"this is a {enc.format!r} encoding; decode it with formats.get({enc.format!r})"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register("format", "dense", section="2.2")
class Dense(Format):
    """Dense baseline: every element's value, no index (``n k`` bits)."""

    name = "dense"

    def encode(self, tensor, *, index_bits=None):
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, tensor.detach().flatten())

    def decode(self, enc):
        self._check(enc)
        return enc.values.reshape(enc.shape).clone()

    def size_bits(self, enc, value_bits, index_bits):
        return enc.values.numel() * value_bits


@register("format", "bitmap", section="2.2")
class Bitmap(Format):
    """Bitmap: one bit per element says nonzero or not, then the nonzero values (``n + m k``)."""

    name = "bitmap"

    def encode(self, tensor, *, index_bits=None):
        flat = tensor.detach().flatten()
        bitmap = flat != 0
        return Encoded(
            self.name, tuple(tensor.shape), tensor.dtype, flat[bitmap], {"bitmap": bitmap}
        )

    def decode(self, enc):
        self._check(enc)
        bitmap = enc.index["bitmap"]
        out = torch.zeros(bitmap.numel(), dtype=enc.dtype)
        out[bitmap] = enc.values
        return out.reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        # the bitmap is one bit per element whatever the index width
        return enc.index["bitmap"].numel() + enc.values.numel() * value_bits


@register("format", "coo", section="2.2")
class COO(Format):
    """Coordinates: each nonzero with its coordinate tuple (``m (k + w(n))``; torch COO)."""

    name = "coo"

    def encode(self, tensor, *, index_bits=None):
        t = tensor.detach()
        indices = torch.nonzero(t).T  # (ndim, m), row-major order like torch's coalesce
        return Encoded(self.name, tuple(t.shape), t.dtype, t[t != 0], {"indices": indices})

    def decode(self, enc):
        self._check(enc)
        out = torch.zeros(enc.shape, dtype=enc.dtype)
        out[tuple(enc.index["indices"])] = enc.values
        return out

    def size_bits(self, enc, value_bits, index_bits):
        m, n = enc.values.numel(), math.prod(enc.shape)
        if index_bits is None:
            # a coordinate tuple packed in mixed radix is one offset in [0, n)
            per_entry = width(n, None)
        else:  # one fixed-width word per dimension, as torch stores them
            per_entry = sum(width(d, index_bits) for d in enc.shape)
        return m * (value_bits + per_entry)


@register("format", "csr", section="2.2")
class CSR(Format):
    """Compressed sparse rows: values, their column indices and ``n_r + 1`` row pointers."""

    name = "csr"

    def encode(self, tensor, *, index_bits=None):
        a = _matrix(tensor.detach())
        nz = a != 0
        index = {"crow_indices": _pointers(nz.sum(1)), "col_indices": torch.nonzero(nz)[:, 1]}
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, a[nz], index)

    def decode(self, enc):
        self._check(enc)
        n_r, n_c = _matrix_shape(enc.shape)
        row = torch.repeat_interleave(torch.arange(n_r), enc.index["crow_indices"].diff())
        out = torch.zeros(n_r, n_c, dtype=enc.dtype)
        out[row, enc.index["col_indices"]] = enc.values
        return out.reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        n_c = _matrix_shape(enc.shape)[1]
        m = enc.values.numel()
        return (
            m * value_bits
            + enc.index["col_indices"].numel() * width(n_c, index_bits)
            + enc.index["crow_indices"].numel() * width(m + 1, index_bits)
        )


@register("format", "csc", section="2.2")
class CSC(Format):
    """Compressed sparse columns: csr of the transpose (values in column-major order)."""

    name = "csc"

    def encode(self, tensor, *, index_bits=None):
        a = _matrix(tensor.detach()).T
        nz = a != 0
        index = {"ccol_indices": _pointers(nz.sum(1)), "row_indices": torch.nonzero(nz)[:, 1]}
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, a[nz], index)

    def decode(self, enc):
        self._check(enc)
        n_r, n_c = _matrix_shape(enc.shape)
        col = torch.repeat_interleave(torch.arange(n_c), enc.index["ccol_indices"].diff())
        out = torch.zeros(n_r, n_c, dtype=enc.dtype)
        out[enc.index["row_indices"], col] = enc.values
        return out.reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        n_r = _matrix_shape(enc.shape)[0]
        m = enc.values.numel()
        return (
            m * value_bits
            + enc.index["row_indices"].numel() * width(n_r, index_bits)
            + enc.index["ccol_indices"].numel() * width(m + 1, index_bits)
        )


@register("format", "bsr", section="2.2")
class BSR(Format):
    """Block sparse rows: csr over ``r x c`` blocks; every block holding a nonzero is stored
    whole, with one column index per block (Hoefler 2021, section 3.1)."""

    name = "bsr"

    def __init__(self, block: tuple[int, int] | int = (4, 4)) -> None:
        r, c = (block, block) if isinstance(block, int) else block
        if r < 1 or c < 1:
            raise ValueError(f"block sides must be positive, got {block}")
        self.block = (int(r), int(c))

    def _tiles(self, a: torch.Tensor) -> torch.Tensor:
        (n_r, n_c), (r, c) = a.shape, self.block
        if n_r % r or n_c % c:
            raise ValueError(
                f"{r}x{c} blocks do not tile a {n_r}x{n_c} matrix; choose a block that "
                f"divides both sides (e.g. block=(1, 1) is csr)"
            )
        # (block rows, block cols, r, c)
        return a.reshape(n_r // r, r, n_c // c, c).transpose(1, 2)

    def encode(self, tensor, *, index_bits=None):
        tiles = self._tiles(_matrix(tensor.detach()))
        kept = (tiles != 0).any(dim=3).any(dim=2)
        index = {"crow_indices": _pointers(kept.sum(1)), "col_indices": torch.nonzero(kept)[:, 1]}
        meta = {"block": self.block}
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, tiles[kept], index, meta)

    def decode(self, enc):
        self._check(enc)
        fmt = BSR(enc.meta["block"])
        tiles = fmt._tiles(torch.zeros(_matrix_shape(enc.shape)))
        tiles = tiles.to(enc.dtype).contiguous()
        row = torch.repeat_interleave(
            torch.arange(tiles.shape[0]), enc.index["crow_indices"].diff()
        )
        tiles[row, enc.index["col_indices"]] = enc.values
        return tiles.transpose(1, 2).reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        n_c = _matrix_shape(enc.shape)[1]
        blocks = enc.index["col_indices"].numel()
        return (
            enc.values.numel() * value_bits
            + blocks * width(n_c // enc.meta["block"][1], index_bits)
            + enc.index["crow_indices"].numel() * width(blocks + 1, index_bits)
        )

    def __repr__(self) -> str:
        return f"BSR(block={self.block})"


@register("format", "rle", section="2.2")
class RLE(Format):
    """Run-length / delta offsets: each nonzero with the number of zeros before it.

    Minimal width: ``ceil(log2 d_max)`` bits per run, ``d_max`` the largest gap between
    consecutive nonzeros (positions ``p_0 = -1, p_1, ...``; gap ``p_j - p_{j-1}``, run =
    gap - 1).  Fixed width ``b``: the zero-padded delta of Han 2016: a run longer than
    ``2^b - 1`` zeros is cut by *filler* entries (run ``2^b - 1``, value 0), each standing
    for ``2^b`` positions.
    """

    name = "rle"

    def encode(self, tensor, *, index_bits=None):
        flat = tensor.detach().flatten()
        pos = torch.nonzero(flat).flatten()
        runs = torch.diff(pos, prepend=pos.new_full((1,), -1)) - 1
        values = flat[pos]
        if index_bits is not None and runs.numel() and int(runs.max()) >= 2**index_bits:
            span = 2**index_bits  # positions one filler covers
            fillers = runs // span
            per = fillers + 1  # entries per nonzero: its fillers, then itself
            last = per.cumsum(0) - 1
            padded_runs = torch.full((int(per.sum()),), span - 1, dtype=torch.int64)
            padded_runs[last] = runs - fillers * span
            padded_values = torch.zeros(len(padded_runs), dtype=flat.dtype)
            padded_values[last] = values
            runs, values = padded_runs, padded_values
        meta = {"index_bits": index_bits}
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, values, {"runs": runs}, meta)

    def decode(self, enc):
        self._check(enc)
        out = torch.zeros(math.prod(enc.shape), dtype=enc.dtype)
        pos = (enc.index["runs"] + 1).cumsum(0) - 1
        out[pos] = enc.values  # fillers write an explicit zero
        return out.reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        if index_bits != enc.meta["index_bits"]:
            raise ValueError(
                f"this rle encoding was made for index_bits={enc.meta['index_bits']}; "
                f"re-encode with index_bits={index_bits}"
            )
        runs = enc.index["runs"]
        d_max = int(runs.max()) + 1 if runs.numel() else 1  # largest gap
        return runs.numel() * (value_bits + width(d_max, index_bits))


@register("format", "ell", section="2.2")
class ELL(Format):
    """ELLPACK: every row padded to ``K``, the largest number of nonzeros in a row.

    ``n_r x K`` column indices and values; padding has column 0 and value 0.  Regular
    rows suit GPUs (and our gather kernel in :mod:`sparsity_lab.accel`).
    """

    name = "ell"

    def encode(self, tensor, *, index_bits=None):
        a = _matrix(tensor.detach())
        nz = a != 0
        k = int(nz.sum(1).max()) if a.numel() else 0
        # stable sort puts each row's nonzeros first, in column order
        order = torch.argsort((~nz).to(torch.int8), dim=1, stable=True)[:, :k]
        keep = torch.gather(nz, 1, order)
        cols = torch.where(keep, order, torch.zeros_like(order))
        values = torch.where(keep, torch.gather(a, 1, order), torch.zeros((), dtype=a.dtype))
        return Encoded(self.name, tuple(tensor.shape), tensor.dtype, values, {"cols": cols})

    def decode(self, enc):
        self._check(enc)
        shape = _matrix_shape(enc.shape)
        out = torch.zeros(shape, dtype=enc.dtype)
        out.scatter_add_(1, enc.index["cols"], enc.values)  # padding adds 0 to column 0
        return out.reshape(enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        n_c = _matrix_shape(enc.shape)[1]
        return enc.values.numel() * (value_bits + width(n_c, index_bits))


@register("format", "nm_format", section="2.2")
class NMFormat(Format):
    """N:M: in every group of M along the input dimension, N values and their positions.

    The position of each kept value takes ``ceil(log2 M)`` bits whatever ``index_bits`` is:
    2 bits for 2:4, the metadata of NVIDIA's sparse tensor cores (Mishra 2021).  A group
    with fewer than N nonzeros stores explicit zeros; a tensor with more than N nonzeros
    in a group is not N:M sparse and is refused.
    """

    name = "nm_format"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.pattern = NM(n, m)
        self.n, self.m = self.pattern.n, self.pattern.m

    def encode(self, tensor, *, index_bits=None):
        t = tensor.detach()
        self.pattern.validate(tuple(t.shape), "tensor")
        grouped = self.pattern._grouped(t)
        alive = (grouped != 0).sum(1)
        if alive.numel() and int(alive.max()) > self.n:
            raise ValueError(
                f"the tensor is not {self.n}:{self.m} sparse: a group of {self.m} holds "
                f"{int(alive.max())} nonzeros; prune it with pattern '{self.n}:{self.m}' first"
            )
        # nonzeros first (stable: in position order), then zeros to fill N slots
        order = torch.argsort((grouped == 0).to(torch.int8), dim=1, stable=True)[:, : self.n]
        positions = order.sort(dim=1).values
        values = torch.gather(grouped, 1, positions)
        meta = {"n": self.n, "m": self.m}
        return Encoded(self.name, tuple(t.shape), t.dtype, values, {"positions": positions}, meta)

    def decode(self, enc):
        self._check(enc)
        pattern = NM(enc.meta["n"], enc.meta["m"])
        groups = torch.zeros(enc.values.shape[0], pattern.m, dtype=enc.dtype)
        groups.scatter_(1, enc.index["positions"], enc.values)
        return pattern.expand(groups.flatten(), enc.shape)

    def size_bits(self, enc, value_bits, index_bits):
        meta_bits = width(enc.meta["m"], None)
        return enc.values.numel() * (value_bits + meta_bits)

    def __repr__(self) -> str:
        return f"NMFormat({self.n}, {self.m})"


# ------------------------------------------------------------------------------- helpers


def get(name: str, **options: Any) -> Format:
    """The format registered as ``name``, built with ``options`` (``block=`` for bsr,
    ``n=, m=`` for nm_format)."""
    return registry_get(name, "format")(**options)


def bits(
    tensor: torch.Tensor,
    name: str,
    *,
    value_bits: int | None = None,
    index_bits: int | None = None,
    **options: Any,
) -> int:
    """Size of ``tensor`` in format ``name``, in bits (see :meth:`Format.bits`)."""
    return get(name, **options).bits(tensor, value_bits=value_bits, index_bits=index_bits)


def torch_bits(sparse: torch.Tensor) -> int:
    """Bits of a torch sparse tensor's arrays (values and indices, at their dtypes)."""
    layout = sparse.layout
    if layout == torch.sparse_coo:
        arrays = [sparse._values(), sparse._indices()]
    elif layout in (torch.sparse_csr, torch.sparse_bsr):
        arrays = [sparse.values(), sparse.crow_indices(), sparse.col_indices()]
    elif layout == torch.sparse_csc:
        arrays = [sparse.values(), sparse.ccol_indices(), sparse.row_indices()]
    else:
        raise ValueError(f"torch_bits takes a COO, CSR, CSC or BSR tensor, got layout {layout}")
    return sum(8 * a.numel() * a.element_size() for a in arrays)


FORMATS = ("dense", "bitmap", "coo", "csr", "csc", "bsr", "rle", "ell")


def crossover(
    shape: tuple[int, ...] = (1000, 1000),
    sparsities: list[float] | None = None,
    *,
    value_bits: int = 8,
    index_bits: int | None = None,
    formats: tuple[str, ...] = FORMATS,
    block: tuple[int, int] = (4, 4),
    seed: int = 0,
) -> pd.DataFrame:
    """Exact size of every format on random unstructured tensors, one per sparsity.

    The tensors are nested (a higher sparsity prunes more of the same random scores), so
    the curves are smooth.  Returns one row per (sparsity, format) with ``bits`` and
    ``bits_per_element``.  ``nm_format`` is a single point (2:4 at sparsity 0.5) and is
    added when ``formats`` names it.  The survey's example uses ``value_bits=8``.
    """
    if sparsities is None:
        sparsities = [i / 100 for i in range(0, 100, 2)] + [0.99, 0.995, 0.999]
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(shape, generator=gen)
    values = torch.randn(shape, generator=gen).abs() + 0.1  # never an accidental zero
    n = math.prod(shape)
    rows = []
    for s in sparsities:
        check_sparsity(s)
        t = values * prune_lowest(scores.flatten(), round(s * n)).reshape(shape)
        for name in formats:
            if name == "nm_format":
                continue
            fmt = get(name, block=block) if name == "bsr" else get(name)
            size = fmt.bits(t, value_bits=value_bits, index_bits=index_bits)
            rows.append({"sparsity": s, "format": name, "bits": size, "bits_per_element": size / n})
    if "nm_format" in formats:
        t = values * NM(2, 4).mask(scores)
        size = get("nm_format").bits(t, value_bits=value_bits, index_bits=index_bits)
        rows.append(
            {"sparsity": 0.5, "format": "nm_format", "bits": size, "bits_per_element": size / n}
        )
    return pd.DataFrame(rows)


def smallest(table: pd.DataFrame) -> pd.DataFrame:
    """For each sparsity of a :func:`crossover` table, the format with the fewest bits."""
    sweep = table[table["format"] != "nm_format"]
    best = sweep.loc[sweep.groupby("sparsity")["bits"].idxmin()]
    return best[["sparsity", "format", "bits"]].reset_index(drop=True)


def plot_crossover(table: pd.DataFrame, ax: Any = None, *, title: str | None = None) -> Any:
    """Bits per element against sparsity for each format of a :func:`crossover` table.

    The band under the curves names the smallest format at each sparsity (the survey's
    picture).  Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    colors, drawn = {}, {}
    for name, group in table.groupby("format", sort=False):
        style = {"marker": "*", "markersize": 12, "linestyle": ""} if len(group) == 1 else {}
        curve = (tuple(group["sparsity"]), tuple(group["bits_per_element"]))
        label = name
        if curve in drawn and len(group) > 1:  # CSC is CSR's size on a square matrix
            style, label = {"linestyle": "--"}, f"{name} (= {drawn[curve]})"
        drawn.setdefault(curve, name)
        (line,) = ax.plot(group["sparsity"], group["bits_per_element"], label=label, **style)
        colors[name] = line.get_color()
    best = smallest(table)
    # a strip at the bottom coloured by the winning format
    s = best["sparsity"].to_numpy()
    edges = [s[0]] + [(a + b) / 2 for a, b in zip(s[:-1], s[1:], strict=True)] + [s[-1]]
    for i, name in enumerate(best["format"]):
        ax.axvspan(edges[i], edges[i + 1], ymin=0, ymax=0.04, color=colors[name], lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("bits per element (log)")
    ax.set_title(title or "Storage of each format (strip: smallest)")
    ax.legend(ncol=2, fontsize=8)
    return ax
