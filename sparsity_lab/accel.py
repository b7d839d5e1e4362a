"""Sparse inference: turn a pruned model into one that runs faster (survey section 7).

A masked model still multiplies by every zero.  :func:`export` builds an inference copy in
which each layer runs the fastest way it can:

* structured zeros (whole channels, heads, blocks of a residual network) are removed
  physically by :func:`sparsity_lab.shrink.shrink`: a smaller dense model is faster at every
  batch size, with no index overhead;
* an unstructured or block-sparse ``Linear`` becomes a :class:`SparseLinear` that keeps its
  weight in CSR (or BSR) form and multiplies with one of three CPU kernels:
  ``torch_csr`` and ``torch_bsr`` (``torch.sparse``, MKL where available) and
  ``scipy_csr`` (the compiled CSR kernel of ``scipy.sparse``, called on the arrays directly,
  which has the least per-call overhead and so wins at small batches);
* a ``Conv1d``/``Conv2d`` becomes a :class:`SparseConv`: im2col (``F.unfold``) then the same
  sparse matrix product;
* everything else stays as it is.

**Auto-dispatch.**  Sparse kernels pay an index lookup per nonzero and a fixed cost per
call, so below some sparsity (the *break-even*) the dense product is faster; where that
point lies depends on the shape, the batch and the machine.  With ``dispatch="measure"``
(the default) export times every candidate kernel on the layer's real input at the
requested batch size and keeps dense unless a kernel is faster by a margin (``margin``);
at the end it times the whole model and falls back to the dense (shrunk) model if the mix
is slower.  So an exported model is never meaningfully slower than dense.  At batch 1 a
model that is a chain of Linear layers and ReLUs (an MLP) is also timed as one compiled
call over every layer (:class:`sparsity_lab.fused.FusedSparseChain`, which removes the
per-layer call overhead that dominates small matrix-vector products) and kept in that form
when it measures faster (its ``export_plan`` is then the per-layer plan of the model it
runs for every other batch, and ``chain_speedup`` the measured gain at batch 1).  Last,
a model made only of dense convolutions, Linear layers, ReLUs, max-pools, additions and
global average pooling (LeNet-5, the small ResNets, a shrunk copy of either) is timed as
one compiled call of the whole network (:class:`sparsity_lab.fused_net.CompiledNet`: no
module calls, each loop compiled for its own sizes) and kept when it measures faster at
the example's batch, for batches up to that one (``compiled_speedup``); larger batches
run the per-layer model.
``dispatch="predict"`` uses a fixed sparsity threshold instead (no timing; see
:data:`PREDICTED_BREAK_EVEN`), and ``dispatch="torch_csr"`` (or any kernel name) forces
that kernel on every eligible layer, which is how the notebook shows the slow cases.

**Correctness.**  export checks that the exported model's outputs equal the masked model's
(eval mode) on the example batch within ``tolerance`` and raises otherwise.

**Saving.**  :func:`save` and :func:`load` write and read an exported model with
``torch.load(weights_only=True)`` and an explicit allowlist of the module classes an
exported model can hold (:func:`safe_classes`); nothing else in the file is executed.

**N:M.**  :func:`pack_nm` stores an N:M-sparse weight as its N values per group plus
``ceil(log2 M)``-bit positions packed into bytes (2 bits for 2:4, four positions per
byte), and :func:`unpack_nm` restores it exactly.  On a CUDA GPU with compute capability
8.0 or more, ``export(..., device="cuda")`` turns 2:4 Linear layers into torch's
semi-structured sparse tensors (:class:`SemiStructuredLinear`).  That path needs a GPU
and half precision; the test suite skips it on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import fused, fused_net, inference, masks, models, pooling
from . import shrink as shrink_mod
from .formats import BSR, CSR, Encoded, NMFormat
from .modes import evaluating
from .patterns import NM

__all__ = [
    "KERNELS",
    "PREDICTED_BREAK_EVEN",
    "SparseLinear",
    "SparseConv",
    "SemiStructuredLinear",
    "export",
    "plan",
    "kernels_run",
    "time_call",
    "time_interleaved",
    "time_forward",
    "save",
    "load",
    "safe_classes",
    "PackedNM",
    "pack_nm",
    "unpack_nm",
    "gpu_available",
]

#: CPU kernels a sparse layer can use.
KERNELS = ("torch_csr", "torch_bsr", "scipy_csr")

#: ``dispatch="predict"``: a layer goes sparse (``scipy_csr`` for batches up to 8, else
#: ``torch_csr``) when its sparsity is at least this.  A rough rule for one CPU thread,
#: read off ``benchmarks/acceleration.py``; measuring is more reliable.
PREDICTED_BREAK_EVEN = 0.9

#: Block sides export tries for ``torch_bsr``.
BLOCKS = ((4, 4), (8, 8), (16, 16))

# torch warns once per process that sparse CSR support is in beta
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", ".*Sparse BSR tensor support is in beta")


try:  # scipy's compiled CSR kernels (csr_matvec, csr_matvecs), called on the arrays directly
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - scipy is a dependency; keep working without it
    _sparsetools = None


# ----------------------------------------------------------------------------- sparse layers


class _SparseWeight(nn.Module):
    """A weight matrix ``R x K`` held as CSR (or BSR) arrays, multiplied by a kernel.

    The arrays are buffers, so the module saves, loads and moves like any other; the
    torch sparse tensor or scipy arrays a kernel needs are rebuilt from them when they
    change (after ``load_state_dict`` or ``.to()``).
    """

    def __init__(
        self, matrix: torch.Tensor, kernel: str, block: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        if kernel == "scipy_csr" and _sparsetools is None:  # pragma: no cover
            raise ValueError("kernel 'scipy_csr' needs scipy; use 'torch_csr'")
        if kernel == "torch_bsr" and (block is None or block[0] != block[1]):
            raise ValueError(
                f"kernel 'torch_bsr' needs square blocks (torch's CPU kernel has no others), "
                f"got block={block}; pass e.g. block=(4, 4)"
            )
        matrix = matrix.detach()
        self.kernel = kernel
        self.block = tuple(block) if kernel == "torch_bsr" else None
        fmt = BSR(self.block or (1, 1)) if kernel == "torch_bsr" else CSR()
        enc = fmt.encode(matrix)
        self.shape = tuple(matrix.shape)
        self.register_buffer("crow_indices", enc.index["crow_indices"])
        self.register_buffer("col_indices", enc.index["col_indices"])
        self.register_buffer("values", enc.values.contiguous())
        self._cache: Any = None
        self._cache_key: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"], state["_cache_key"] = None, None  # rebuilt on first use
        return state

    @property
    def nnz(self) -> int:
        """Values stored (for BSR: every value of the kept blocks)."""
        return self.values.numel()

    def _prepared(self) -> Any:
        """The kernel's operand, rebuilt when the ``values`` buffer was replaced or changed."""
        values = self._buffers["values"]  # plain dict access: this runs on every call
        key = (id(values), values._version)
        if self._cache_key != key:
            if self.kernel == "torch_csr":
                self._cache = torch.sparse_csr_tensor(
                    self.crow_indices,
                    self.col_indices,
                    values,
                    self.shape,
                    check_invariants=False,  # built by our own encoder
                )
            elif self.kernel == "torch_bsr":
                self._cache = torch.sparse_bsr_tensor(
                    self.crow_indices, self.col_indices, values, self.shape, check_invariants=False
                )
            else:  # scipy's kernels take int32 indices and numpy arrays (sharing memory)
                self._cache = (
                    self.crow_indices.to(torch.int32).numpy(),
                    self.col_indices.to(torch.int32).numpy(),
                    values.detach().numpy(),
                )
            self._cache_key = key
        return self._cache

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``W @ x + bias[:, None]`` for a dense ``K x N`` ``x``; an ``R x N`` tensor."""
        prepared = self._prepared()
        if self.kernel != "scipy_csr":
            return prepared @ x if bias is None else torch.addmm(bias.unsqueeze(1), prepared, x)
        rows, cols = self.shape
        indptr, indices, data = prepared
        n = x.shape[1]
        out = np.zeros((rows, n), dtype=data.dtype)
        if bias is not None:  # the kernel accumulates into out
            out += bias.detach().numpy()[:, None]
        xs = x.detach().numpy()
        if n == 1:  # matrix-vector: x is one column, contiguous whatever its strides say
            _sparsetools.csr_matvec(rows, cols, indptr, indices, data, xs.reshape(-1), out)
        else:
            xs = np.ascontiguousarray(xs)
            _sparsetools.csr_matvecs(rows, cols, n, indptr, indices, data, xs.ravel(), out.ravel())
        return torch.from_numpy(out)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W^T + bias`` for an ``N x K`` ``x``: ``matmul`` with a fast path for one row.

        One example is the latency case, where per-call overhead is most of the time, so
        the row goes straight to scipy's matrix-vector kernel without transposes.
        """
        if self.kernel == "scipy_csr" and x.shape[0] == 1:
            indptr, indices, data = self._prepared()
            rows, cols = self.shape
            out = np.zeros(rows, dtype=data.dtype) if bias is None else bias.numpy().copy()
            xs = x.detach().numpy().reshape(-1)
            _sparsetools.csr_matvec(rows, cols, indptr, indices, data, xs, out)
            return torch.from_numpy(out.reshape(1, rows))
        if self.kernel == "torch_csr" and x.shape[0] == 1:
            # torch's CSR matrix-vector kernel skips addmm's transposes and dense bookkeeping
            y = torch.mv(self._prepared(), x[0])
            return (y if bias is None else y + bias).unsqueeze(0)
        return self.matmul(x.T, bias).T

    def extra_repr(self) -> str:
        density = self.nnz / math.prod(self.shape)
        block = f", block={self.block}" if self.block else ""
        return f"shape={self.shape}, kernel={self.kernel}{block}, stored_density={density:.4f}"


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` sparse; inference only (no gradients).

    Built from a dense ``nn.Linear`` (or shrink's ``OffsetLinear``, whose ``offset`` it
    keeps) with :meth:`from_dense`.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        kernel: str = "torch_csr",
        block: tuple[int, int] | None = None,
        offset: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = _SparseWeight(weight, kernel, block)
        self.register_buffer("bias", None if bias is None else bias.detach().clone().contiguous())
        self.register_buffer("offset", None if offset is None else offset.detach().clone())

    @classmethod
    def from_dense(cls, layer: nn.Linear, kernel: str = "torch_csr", block=None) -> SparseLinear:
        """A SparseLinear computing what ``layer`` computes."""
        return cls(
            layer.weight,
            layer.bias,
            kernel=kernel,
            block=block,
            offset=getattr(layer, "offset", None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # the common case, without reshapes
            y = self.weight.linear(x, self.bias)
        else:
            flat = x.reshape(-1, self.in_features)
            y = self.weight.linear(flat, self.bias).reshape(*x.shape[:-1], -1)
        return y if self.offset is None else y + self.offset

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class SparseConv(nn.Module):
    """A Conv1d/Conv2d as im2col (``F.unfold``) followed by a sparse matrix product.

    The weight ``(out, in, *kernel)`` is the sparse matrix ``out x (in * prod(kernel))``;
    the unfolded input holds one column per output position.  Only ``groups=1``, numeric
    padding and ``padding_mode='zeros'`` are supported (:func:`export` keeps other
    convolutions dense).
    """

    def __init__(self, layer: nn.Conv1d | nn.Conv2d, kernel: str = "torch_csr", block=None):
        super().__init__()
        if not _conv_supported(layer):
            raise ValueError(
                f"SparseConv needs groups=1, numeric padding and padding_mode='zeros'; "
                f"{layer} has other settings: keep it dense"
            )
        self.dims = 1 if isinstance(layer, nn.Conv1d) else 2
        self.out_channels = layer.out_channels

        # a Conv1d is a Conv2d over a height-1 image: kernel, stride and dilation 1, padding 0
        def pair(v: tuple[int, ...], one: int) -> tuple[int, int]:
            return (one, v[0]) if self.dims == 1 else (v[0], v[1])

        self.kernel_size, self.stride = pair(layer.kernel_size, 1), pair(layer.stride, 1)
        self.padding, self.dilation = pair(layer.padding, 0), pair(layer.dilation, 1)
        matrix = layer.weight.detach().reshape(layer.out_channels, -1)
        self.weight = _SparseWeight(matrix, kernel, block)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        offset = getattr(layer, "offset", None)
        self.register_buffer("offset", None if offset is None else offset.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.unsqueeze(2) if self.dims == 1 else x
        batch, _, height, width = image.shape
        cols = F.unfold(image, self.kernel_size, self.dilation, self.padding, self.stride)
        positions = cols.shape[2]
        # (batch, C*k, L) -> (C*k, batch*L): one column per output position
        stacked = cols.transpose(0, 1).reshape(cols.shape[1], batch * positions)
        rows = self.out_channels
        y = self.weight.matmul(stacked, self.bias).reshape(rows, batch, positions).transpose(0, 1)
        out_h = height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1
        out_h = out_h // self.stride[0] + 1
        y = y.reshape(batch, rows, out_h, positions // out_h)
        if self.dims == 1:
            y = y.squeeze(2)
        return y if self.offset is None else y + self.offset


def _conv_supported(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv1d | nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


class SemiStructuredLinear(nn.Module):
    """A 2:4-sparse Linear on a CUDA GPU through torch's semi-structured sparse tensors.

    Needs compute capability >= 8.0 (sparse tensor cores) and half precision; the 2:4
    groups run along the input dimension, as :class:`sparsity_lab.patterns.NM` makes them.
    Untested on hardware in this project's CI (it has no GPU).
    """

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        check_gpu()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        weight = layer.weight.detach().to("cuda", torch.float16)
        self.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
        bias = None if layer.bias is None else layer.bias.detach().to("cuda", torch.float16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.float16), self.weight, self.bias)


def gpu_available() -> bool:
    """Whether a CUDA GPU with compute capability >= 8.0 (2:4 sparse tensor cores) is here."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def check_gpu() -> None:
    """Raise a clear error unless :func:`gpu_available`."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "the 2:4 semi-structured path needs a CUDA GPU and none is available; export "
            "for the CPU instead (device='cpu')"
        )
    if torch.cuda.get_device_capability() < (8, 0):
        major, minor = torch.cuda.get_device_capability()
        raise RuntimeError(
            f"2:4 sparse tensor cores need compute capability >= 8.0, this GPU has "
            f"{major}.{minor}; export for the CPU instead"
        )


# ---------------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any], *, repeats: int = 7, budget_s: float = 0.02) -> float:
    """Median seconds of one call of ``fn``: ``repeats`` rounds of as many calls as fit in
    ``budget_s`` (at least one), after a warm-up call."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, min(1000, int(budget_s / once)))
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def time_interleaved(
    fns: dict[Any, Callable[[], Any]], repeats: int = 7, budget_s: float = 0.02
) -> dict[Any, float]:
    """Median seconds per call of each function, timed in interleaved rounds so that machine
    noise hits all of them alike (each round: as many calls as fit in ``budget_s``)."""
    calls = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, min(1000, int(budget_s / max(time.perf_counter() - start, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def time_forward(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    rounds: int,
    *,
    split: Iterable[str] = (),
    layers: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> dict[str, dict[str, float]]:
    """Median seconds of one forward pass of each model on ``x``, and where the time goes.

    Every model runs once per round, in turn, so machine noise hits them alike (after one
    warm-up pass each, in eval mode, without gradients); ``rounds`` is at least 1.  Each
    model's modules get their own training modes back afterwards, even when a pass raises.
    For each name in ``split`` a copy of that model with hooks around its ``layers`` runs in
    the same rounds, as ``"<name>, hooked"``: the hooks cost time, so the plain model's
    total stays clean.  Returns ``{name: {"total", "inside", "rest"}}``, the median over
    rounds of the pass, of the time inside ``layers`` (0 without hooks) and of the rest of
    the pass.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (timed passes per model), got {rounds}")
    clock = {"inside": 0.0, "start": 0.0}

    def enter(*_: Any) -> None:
        clock["start"] = time.perf_counter()

    def leave(*_: Any) -> None:
        clock["inside"] += time.perf_counter() - clock["start"]

    runs = dict(models)
    for name in split:
        runs[f"{name}, hooked"] = timed_copy = copy.deepcopy(models[name])
        for layer in timed_copy.modules():
            if isinstance(layer, layers):
                layer.register_forward_pre_hook(enter)
                layer.register_forward_hook(leave)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with torch.no_grad(), contextlib.ExitStack() as modes:
        for model in runs.values():
            modes.enter_context(evaluating(model))  # each module's own mode back on exit
            model(x)  # warm-up
        for _ in range(rounds):
            for name, model in runs.items():
                clock["inside"] = 0.0
                start = time.perf_counter()
                model(x)
                samples[name].append((time.perf_counter() - start, clock["inside"]))
    return {
        name: {
            "total": statistics.median(t for t, _ in pairs),
            "inside": statistics.median(i for _, i in pairs),
            "rest": statistics.median(t - i for t, i in pairs),
        }
        for name, pairs in samples.items()
    }


# ---------------------------------------------------------------------------------- export


@dataclass
class LayerChoice:
    """What export decided for one layer, and the timings it decided on (seconds)."""

    name: str
    layer: str
    sparsity: float
    kernel: str
    block: tuple[int, int] | None
    dense_s: float | None
    sparse_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _candidates(module: nn.Module, kernels: Iterable[str]) -> list[tuple[str, Any]]:
    """(kernel, block) pairs worth trying for ``module``'s weight."""
    matrix = module.weight.detach().reshape(module.weight.shape[0], -1)
    nnz = int(matrix.count_nonzero())
    found = []
    for kernel in kernels:
        if kernel != "torch_bsr":
            found.append((kernel, None))
            continue
        for r, c in BLOCKS:
            if matrix.shape[0] % r or matrix.shape[1] % c:
                continue
            stored = BSR((r, c)).encode(matrix).values.numel()
            if stored <= 2 * nnz:  # blocks that mostly hold zeros would waste the work
                found.append((kernel, (r, c)))
    return found


def _sparse_module(module: nn.Module, kernel: str, block: Any) -> nn.Module:
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, kernel, block)
    return SparseConv(module, kernel, block)


def _eligible(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _conv_supported(module)


def _dense_copy(model: nn.Module, example: torch.Tensor, use_shrink: bool) -> nn.Module:
    """The masked model as plain dense tensors: shrunk when shrink knows its structure."""
    if use_shrink:
        try:
            return shrink_mod.shrink(model, example)
        except ValueError as err:
            if "parametrizations" in str(err):
                raise
            # shrink does not know this architecture: keep its shape, drop the masks
    work = copy.deepcopy(model)
    masks.squash(work)
    return work


def export(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    batch_size: int = 1,
    dispatch: str = "measure",
    kernels: Iterable[str] = KERNELS,
    use_shrink: bool = True,
    margin: float = 0.9,
    min_sparsity: float = 0.5,
    tolerance: float = 1e-4,
    repeats: int = 7,
    budget_s: float = 0.01,
    device: str = "cpu",
) -> nn.Module:
    """An inference copy of the masked ``model`` that runs each layer the fastest way.

    ``example_input`` is a batch the model accepts (by default ``batch_size`` random
    examples of ``model.input_shape``); layers are timed on their real inputs for that
    batch.  ``dispatch``: ``"measure"`` (time every kernel, keep dense unless a kernel
    takes at most ``margin`` of the dense time), ``"predict"`` (sparse where the weight's
    sparsity is at least :data:`PREDICTED_BREAK_EVEN`), ``"dense"`` (shrink only) or a
    kernel name to force it.  Weights sparser than ``min_sparsity`` are never timed: no CPU
    kernel beats dense there.  ``use_shrink`` removes structured zeros first.
    ``device="cuda"`` turns 2:4 Linear layers into :class:`SemiStructuredLinear`
    (needs compute capability >= 8.0).  The result is in eval mode and carries
    ``export_plan``, one :class:`LayerChoice` per weighted layer.

    On the CPU, BatchNorm is folded into the convolution before it (``folded_batchnorm``
    lists the norms), and with ``dispatch="measure"`` each dense convolution and 2x2
    max-pool gets the faster of its two exact kernels on its real input
    (:mod:`sparsity_lab.inference`; ``dense_kernels`` holds the choices and timings).
    ``kernels=()`` measures only those, and never fuses a sparse chain: a dense model's best
    export, the fair reference for a shrunk one.  Both may end as one compiled call of the
    whole network (:mod:`sparsity_lab.fused_net`) where that measures faster.
    """
    modes = ("measure", "predict", "dense", *KERNELS)
    if dispatch not in modes:
        raise ValueError(f"dispatch must be one of {', '.join(modes)}, got {dispatch!r}")
    unknown = set(kernels) - set(KERNELS)
    if unknown:
        raise ValueError(f"unknown kernels {sorted(unknown)}; choose from {', '.join(KERNELS)}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        check_gpu()
    with evaluating(model):
        x = example_input
        if x is None:
            x = shrink_mod.example_batch(model, batch=batch_size)
        with torch.no_grad():
            reference = model(x)
        work = _dense_copy(model, x, use_shrink).eval().requires_grad_(False)
        if device == "cuda":
            work = _to_semi_structured(work)
        else:
            work.folded_batchnorm = inference.fold_batchnorm(work)
            work.dense_kernels = {}
            if dispatch == "measure":
                # first the best dense kernels: a sparse kernel must beat those, not torch's
                # default, to be worth its place
                work.dense_kernels = inference.choose_kernels(
                    work, x, lambda fns: time_interleaved(fns, repeats, budget_s), margin
                )
            _route(work, x, dispatch, tuple(kernels), margin, min_sparsity, repeats, budget_s)
            if dispatch == "measure":
                work = _guard_whole(work, model, x, use_shrink, repeats, budget_s)
                if x.shape[0] == 1 and tuple(kernels):  # the chain is a sparse kernel
                    work = _fuse_chain(work, model, x, use_shrink, repeats, budget_s)
                work = _compile_whole(work, model, x, use_shrink, repeats, budget_s)
        _check_outputs(work, x, reference, tolerance, device)
    return work


def _route(
    work: nn.Module,
    x: torch.Tensor,
    dispatch: str,
    kernels: tuple[str, ...],
    margin: float,
    min_sparsity: float,
    repeats: int,
    budget_s: float,
) -> None:
    """Replace each eligible layer of ``work`` by its fastest form (in place)."""
    names = [n for n, m in work.named_modules() if n and _eligible(m)]
    inputs = inference.layer_inputs(work, x, names)
    choices = []
    for name in names:
        module = work.get_submodule(name)
        if name not in inputs:  # never called on this input
            continue
        weight = module.weight.detach()
        sparsity = 1 - int(weight.count_nonzero()) / weight.numel()
        choice = LayerChoice(name, type(module).__name__, sparsity, "dense", None, None, None)
        if dispatch != "dense" and sparsity >= min_sparsity or dispatch in KERNELS:
            replacement = _choose(
                module, inputs[name], choice, dispatch, kernels, margin, repeats, budget_s
            )
            if replacement is not None:
                shrink_mod._set_module(work, name, replacement)
        choices.append(choice)
    work.export_plan = choices


def _choose(module, inp, choice, dispatch, kernels, margin, repeats, budget_s):
    """The sparse replacement for ``module`` (None: keep dense); fills ``choice``."""
    if dispatch in KERNELS:
        block = _candidates(module, [dispatch])
        if not block:
            return None  # no block size tiles this weight
        choice.kernel, choice.block = block[0]
        return _sparse_module(module, *block[0])
    if dispatch == "predict":
        if choice.sparsity < PREDICTED_BREAK_EVEN:
            return None
        batch = inp.shape[0]
        kernel = "scipy_csr" if batch <= 8 and "scipy_csr" in kernels else "torch_csr"
        choice.kernel = kernel
        return _sparse_module(module, kernel, None)
    options = {(k, b): _sparse_module(module, k, b) for k, b in _candidates(module, kernels)}
    fns: dict[Any, Callable[[], Any]] = {"dense": lambda: module(inp)}
    for key, m in options.items():
        fns[key] = lambda m=m: m(inp)
    with torch.no_grad():
        times = time_interleaved(fns, repeats, budget_s)
    choice.dense_s = times.pop("dense")
    if not times:
        return None
    best = min(times, key=times.get)
    choice.sparse_s = times[best]
    if times[best] > margin * choice.dense_s:
        return None
    choice.kernel, choice.block = best
    return options[best]


def _best_dense(model, x, use_shrink, dense_kernels) -> nn.Module:
    """The dense (shrunk) copy of ``model`` with BatchNorm folded and ``dense_kernels``."""
    dense = _dense_copy(model, x, use_shrink).eval().requires_grad_(False)
    dense.folded_batchnorm = inference.fold_batchnorm(dense)
    inference.apply_kernels(dense, dense_kernels)
    return dense


def _guard_whole(work, model, x, use_shrink, repeats, budget_s) -> nn.Module:
    """Return the dense model (BatchNorm folded, the dense kernels ``work`` chose) instead of
    ``work`` if its mix of sparse kernels is slower."""
    if not any(c.kernel != "dense" for c in work.export_plan):
        return work
    dense = _best_dense(model, x, use_shrink, work.dense_kernels)
    with torch.no_grad():
        times = time_interleaved(
            {"dense": lambda: dense(x), "sparse": lambda: work(x)}, repeats, budget_s * 2
        )
    if times["sparse"] <= times["dense"]:
        return work
    for c in work.export_plan:
        c.kernel, c.block = "dense", None
    dense.export_plan, dense.dense_kernels = work.export_plan, work.dense_kernels
    return dense


def _fuse_chain(work, model, x, use_shrink, repeats, budget_s) -> nn.Module:
    """The whole model as one compiled sparse chain (:class:`~sparsity_lab.fused.
    FusedSparseChain`, with ``work`` for other batches) when the model is a chain of
    Linear layers and ReLUs and the chain measures faster than ``work`` on ``x``."""
    if fused.library() is None:
        return work
    dense = _dense_copy(model, x, use_shrink).eval().requires_grad_(False)
    chain = fused.chain_of(dense)
    if chain is None:
        return work
    layers = [(dense.get_submodule(name), relu) for name, relu in chain.layers]
    candidate = fused.FusedSparseChain(layers, work, flatten_input=chain.flatten_input).eval()
    with torch.no_grad():
        times = time_interleaved(
            {"per_layer": lambda: work(x), "chain": lambda: candidate(x)}, repeats, budget_s * 2
        )
    if times["chain"] > times["per_layer"]:
        return work
    # The per-layer plan stays: it is how every other batch runs (``candidate.fallback``).
    candidate.export_plan = work.export_plan
    candidate.dense_kernels = work.dense_kernels
    candidate.folded_batchnorm = work.folded_batchnorm
    candidate.chain_speedup = times["per_layer"] / times["chain"]
    return candidate


def _compile_whole(work, model, x, use_shrink, repeats, budget_s) -> nn.Module:
    """The dense network as one compiled call (:class:`~sparsity_lab.fused_net.CompiledNet`,
    with ``work`` for larger batches) when every operation of it translates and the call
    measures faster than ``work`` on ``x``, whatever ``work`` runs (dense kernels, sparse
    ones, a fused sparse chain): the dense layers compiled together can beat a sparse plan
    that still pays a call per layer."""
    sparse = isinstance(work, fused.FusedSparseChain)
    sparse |= any(c.kernel != "dense" for c in work.export_plan)
    dense = _best_dense(model, x, use_shrink, work.dense_kernels) if sparse else work
    program = fused_net.program_of(dense, x)
    if program is None:
        return work
    candidate = fused_net.CompiledNet(program, work, max_batch=x.shape[0]).eval()
    with torch.no_grad():
        times = time_interleaved(
            {"per_layer": lambda: work(x), "compiled": lambda: candidate(x)}, repeats, budget_s * 2
        )
    if times["compiled"] > times["per_layer"]:
        return work
    for key in ("export_plan", "dense_kernels", "folded_batchnorm"):
        setattr(candidate, key, getattr(work, key))
    candidate.compiled_speedup = times["per_layer"] / times["compiled"]
    return candidate


def _check_outputs(work, x, reference, tolerance, device) -> None:
    with torch.no_grad():
        out = work(x.to(device)).float().cpu()
    diff = float((out - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if diff > tolerance * scale:
        raise RuntimeError(
            f"the exported model differs from the masked model by {diff:.3g} (tolerance "
            f"{tolerance} x {scale:.3g}); please report it, and use dispatch='dense' meanwhile"
        )


def _to_semi_structured(work: nn.Module) -> nn.Module:
    """Move ``work`` to the GPU in half precision; 2:4 Linear layers go semi-structured."""
    work = work.to("cuda", torch.float16)
    plan = []
    for name, module in list(work.named_modules()):
        if type(module) is not nn.Linear:
            continue
        weight = module.weight.detach()
        sparse_24 = weight.shape[1] % 4 == 0 and bool(
            ((NM(2, 4)._grouped(weight) != 0).sum(1) <= 2).all()
        )
        kernel = "dense"
        if sparse_24 and min(weight.shape) >= 64:  # the kernels need sizable multiples
            shrink_mod._set_module(work, name, SemiStructuredLinear(module))
            kernel = "semi_structured"
        sparsity = 1 - int(weight.count_nonzero()) / weight.numel()
        plan.append(LayerChoice(name, "Linear", sparsity, kernel, None, None, None))
    work.export_plan = plan
    return work


def kernels_run(model: nn.Module) -> list[str]:
    """Each planned layer's kernel as an exported model runs it at its export batch:
    ``csr_chain`` inside a fused sparse chain, ``compiled_net`` inside a compiled network,
    else the plan's choice (``dense`` or a sparse kernel)."""
    whole = {fused.FusedSparseChain: "csr_chain", fused_net.CompiledNet: "compiled_net"}
    return [whole.get(type(model), c.kernel) for c in getattr(model, "export_plan", [])]


def plan(model: nn.Module) -> Any:
    """An exported model's per-layer choices as a DataFrame (timings in microseconds)."""
    import pandas as pd

    rows = []
    for c in getattr(model, "export_plan", []):
        row = c.as_dict()
        for key in ("dense_s", "sparse_s"):
            row[key.replace("_s", "_us")] = None if row[key] is None else 1e6 * row.pop(key)
            row.pop(key, None)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- save, load


def safe_classes() -> list[Any]:
    """Classes an exported model may hold, allowlisted for ``torch.load(weights_only=True)``."""
    found: list[Any] = [LayerChoice, set, slice]
    for module in (nn, models, shrink_mod):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, nn.Module):
                found.append(value)
    found += [_SparseWeight, SparseLinear, SparseConv, SemiStructuredLinear]
    found += [inference.Im2colConv2d, inference.StridedMaxPool2d, pooling.MaxPool2x2]
    found += [fused.FusedSparseChain, fused_net.CompiledNet]
    return found


def save(model: nn.Module, path: str | Path | io.BytesIO) -> None:
    """Write an exported model so that :func:`load` reads it without running any code."""
    torch.save(model, path)


def load(path: str | Path | io.BytesIO) -> nn.Module:
    """Read a model written by :func:`save` with ``torch.load(weights_only=True)``.

    Only the classes of :func:`safe_classes` may appear in the file; anything else is
    refused by torch's restricted unpickler.
    """
    with torch.serialization.safe_globals(safe_classes()):
        return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------ N:M


@dataclass
class PackedNM:
    """An N:M-sparse tensor as N values per group of M plus packed position metadata.

    ``values``: ``(groups, N)``; ``metadata``: uint8 bytes holding ``ceil(log2 M)`` bits per
    kept value, lowest bits first (four 2-bit positions per byte for 2:4).
    """

    values: torch.Tensor
    metadata: torch.Tensor
    shape: tuple[int, ...]
    n: int
    m: int

    @property
    def index_bits(self) -> int:
        """Bits per kept value's position: ``ceil(log2 M)``."""
        return max(1, math.ceil(math.log2(self.m)))

    def nbytes(self) -> int:
        """Bytes of values plus metadata."""
        return self.values.numel() * self.values.element_size() + self.metadata.numel()


def pack_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> PackedNM:
    """Pack an N:M-sparse ``weight`` (groups of M along dim 1, as :class:`NM` prunes)."""
    enc = NMFormat(n, m).encode(weight)
    bits = max(1, math.ceil(math.log2(m)))
    positions = enc.index["positions"].flatten().numpy().astype(np.uint64)
    # each position becomes `bits` bits, lowest first; then eight bits make a byte
    bit_array = ((positions[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    packed = np.packbits(bit_array.ravel(), bitorder="little")
    return PackedNM(enc.values, torch.from_numpy(packed), tuple(weight.shape), n, m)


def unpack_nm(packed: PackedNM) -> torch.Tensor:
    """The dense tensor of a :class:`PackedNM`, exactly."""
    bits = packed.index_bits
    kept = packed.values.numel()
    flat = np.unpackbits(packed.metadata.numpy(), bitorder="little")[: kept * bits]
    weights = (1 << np.arange(bits)).astype(np.int64)
    positions = (flat.reshape(kept, bits).astype(np.int64) * weights).sum(1)
    index = {"positions": torch.from_numpy(positions).reshape(packed.values.shape)}
    enc = Encoded(
        "nm_format",
        packed.shape,
        packed.values.dtype,
        packed.values,
        index,
        {"n": packed.n, "m": packed.m},
    )
    return NMFormat(packed.n, packed.m).decode(enc)
