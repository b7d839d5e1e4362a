"""A chain of sparse Linear layers in one compiled call: the batch-1 latency of sparse MLPs.

At batch 1 a small MLP spends most of its time in per-call overhead, not arithmetic: a
95%-sparse LeNet-300-100 holds about 13,000 nonzeros, a few microseconds of work, while
each module call, kernel call and tensor conversion costs about a microsecond.  A per-layer
sparse kernel therefore cannot beat the dense model by much, however sparse the weights.

:class:`FusedSparseChain` runs every layer of a chain of Linear layers and ReLUs (CSR
matrix-vector product, bias, ReLU) in one call of a small C function, compiled with the
system's C compiler on first use (:func:`library`; cached under the library's cache
directory) and called through ``ctypes``.  Batches other than one, and machines without a
compiler, run the per-layer model it was built from.  :func:`chain_of` finds the chain by
tracing the model with ``torch.fx``; :func:`sparsity_lab.accel.export` keeps the fused
form only where it measures faster.  The reference is :func:`reference_forward`, the same
loop in numpy with scipy's CSR kernel; a test checks that the two agree.
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .paths import default_cache_dir

__all__ = [
    "Chain",
    "CompiledCall",
    "FusedSparseChain",
    "chain_of",
    "compiled",
    "library",
    "reference_forward",
    "SOURCE",
]

#: The C kernel: ``batch`` examples, each through every layer in turn.  Each layer's
#: output row ``r`` is ``bias[r] + sum(values[k] * in[indices[k]])`` over the row's
#: nonzeros (in four interleaved partial sums), then ReLU where ``relu[l]``; the two work
#: buffers alternate between layers.  The chain's arrays travel in one struct, built once;
#: the input, the output and the work buffers are the call's own (so threads can share a
#: chain).
SOURCE = r"""
#include <stdint.h>

struct chain {
    int32_t n_layers;
    const int64_t *rows, *cols;
    const int32_t *const *indptr, *const *indices;
    const float *const *values, *const *bias;  /* bias[l] is NULL for no bias */
    const int32_t *relu;
};

/* buf0 and buf1: work space for the widest layer's outputs, the caller's for each call */
void csr_chain(const struct chain *c, int64_t batch, const float *x, float *out,
               float *buf0, float *buf1)
{
    int64_t last = c->rows[c->n_layers - 1];
    for (int64_t n = 0; n < batch; ++n) {
        const float *in = x + n * c->cols[0];
        for (int32_t l = 0; l < c->n_layers; ++l) {
            float *o = l == c->n_layers - 1 ? out + n * last : (l % 2 ? buf1 : buf0);
            const int32_t *p = c->indptr[l], *ix = c->indices[l];
            const float *v = c->values[l], *b = c->bias[l];
            for (int64_t r = 0; r < c->rows[l]; ++r) {
                /* four partial sums, so that the additions do not wait on each other */
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int32_t k = p[r], end = p[r + 1];
                for (; k + 3 < end; k += 4) {
                    a0 += v[k] * in[ix[k]];
                    a1 += v[k + 1] * in[ix[k + 1]];
                    a2 += v[k + 2] * in[ix[k + 2]];
                    a3 += v[k + 3] * in[ix[k + 3]];
                }
                for (; k < end; ++k)
                    a0 += v[k] * in[ix[k]];
                float acc = (b ? b[r] : 0.0f) + ((a0 + a1) + (a2 + a3));
                o[r] = c->relu[l] && acc < 0.0f ? 0.0f : acc;
            }
            in = o;
        }
    }
}
"""
_LIBRARY: dict[str, Any] = {}
_BUILDING = threading.Lock()


class _Chain(ctypes.Structure):
    """The C ``struct chain``."""

    _fields_ = [
        ("n_layers", ctypes.c_int32),
        ("rows", ctypes.c_void_p),
        ("cols", ctypes.c_void_p),
        ("indptr", ctypes.c_void_p),
        ("indices", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("relu", ctypes.c_void_p),
    ]


def compiled(name: str, source: str, flags: tuple[str, ...] = ("-O2",)) -> ctypes.CDLL | None:
    """The C ``source`` compiled with the system's compiler into a shared library, loaded;
    None when no compiler is found (or the build fails).

    Built once per source, flags and machine into ``<cache>/kernels`` (see
    :func:`sparsity_lab.paths.default_cache_dir`); a failed build is not retried in this
    process.  Never ``-ffast-math``: the sums keep the order the source gives them.
    """
    with _BUILDING:  # a second thread waits for the first build instead of getting None
        if name not in _LIBRARY:
            _LIBRARY[name] = _build_library(name, source, flags)
        return _LIBRARY[name]


def _build_library(name: str, source: str, flags: tuple[str, ...]) -> ctypes.CDLL | None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        return None
    tag = hashlib.sha256(f"{source}{flags}{platform.machine()}{platform.system()}".encode())
    target = default_cache_dir() / "kernels" / f"{name}-{tag.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.c"
                path.write_text(source)
                built = Path(tmp) / target.name
                subprocess.run(
                    [compiler, *flags, "-shared", "-fPIC", str(path), "-o", str(built)],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                built.replace(target)  # atomic: a concurrent build never sees half a file
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled chain kernel (:data:`SOURCE`), or None without a C compiler."""
    lib = compiled("csr_chain", SOURCE)
    if lib is not None and lib.csr_chain.argtypes is None:
        lib.csr_chain.restype = None
        lib.csr_chain.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4
    return lib


# ------------------------------------------------------------------------------ tracing


class Chain(NamedTuple):
    """What :func:`chain_of` found: ``layers``, ``[(linear path, relu after), ...]``, and
    whether the model flattens its input before the first layer."""

    layers: list[tuple[str, bool]]
    flatten_input: bool


def chain_of(model: nn.Module) -> Chain | None:
    """The :class:`Chain` of ``model`` when it is an optional flatten, then Linear layers
    each followed by at most one ReLU; None for any other model, or one that ``torch.fx``
    cannot trace."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure means: not a plain chain
        return None
    chain: list[tuple[str, bool]] = []
    flattens = False
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                return None  # a second input
            previous = node
            continue
        if node.op == "output":
            return Chain(chain, flattens) if chain and node.args[0] is previous else None
        if node.all_input_nodes != [previous]:
            return None  # not a chain: a node reads something besides the last one
        target = model.get_submodule(node.target) if node.op == "call_module" else node.target
        if type(target) is nn.Linear:  # exactly: shrink's OffsetLinear adds to its output
            chain.append((node.target, False))
        elif chain and not chain[-1][1] and _is_relu(target, node):
            chain[-1] = (chain[-1][0], True)
        elif not chain and not flattens and _is_flatten(target, node):
            flattens = True  # the input is flattened once, before the first layer
        else:
            return None
        previous = node
    return None


def _is_relu(target: Any, node: Any) -> bool:
    if isinstance(target, nn.ReLU):
        return True
    return node.op == "call_function" and target in (F.relu, torch.relu)


def _is_flatten(target: Any, node: Any) -> bool:
    if isinstance(target, nn.Flatten):
        return target.start_dim == 1 and target.end_dim == -1
    args = tuple(node.args[1:])
    if node.op == "call_function" and target is torch.flatten:
        return args in ((1,), (1, -1)) and not node.kwargs
    if node.op == "call_method" and node.target == "flatten":
        return args in ((1,), (1, -1)) and not node.kwargs
    return False


# ------------------------------------------------------------------------------- module


def _version(tensor: torch.Tensor) -> int:
    """How many times ``tensor`` was changed in place (0 for an inference-mode tensor, which
    cannot be)."""
    try:
        return tensor._version
    except RuntimeError:
        return 0


class CompiledCall(nn.Module):
    """A module whose forward calls compiled code with pointers into its own buffers.

    The pointers are built by :meth:`_build` (which also checks the buffers, returning None
    where the code cannot read them) and rebuilt whenever a buffer's memory moved
    (``.to()``, ``.half()``, ``share_memory()``, a load: each gives another address); they
    are never copied or pickled.
    """

    def __init__(self) -> None:
        super().__init__()
        self._call: Any = None
        self._key: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_call"], state["_key"] = None, None  # pointers are rebuilt on first use
        return state

    def _build(self) -> Any:
        raise NotImplementedError

    def _layout(self) -> tuple:
        """What else the compiled code depends on besides the buffers (checked with them)."""
        return ()

    def _prepared(self) -> Any:
        """What :meth:`_build` gave for the current buffers (None: not readable)."""
        # an in-place change (a load_state_dict) keeps the address but bumps the version
        key = (*((b.data_ptr(), _version(b)) for b in self._buffers.values()), self._layout())
        if self._key != key:
            self._call = None
            self._call = self._build()  # a damaged buffer raises here, and on every call
            self._key = key
        return self._call


class FusedSparseChain(CompiledCall):
    """A Linear/ReLU chain whose batch-1 forward is one call of the compiled CSR kernel.

    Built from the chain's dense (masked or squashed) Linear layers; ``fallback`` is the
    model that runs every other batch (the per-layer export the chain came from).  The CSR
    arrays are buffers, so the module saves, loads, copies and pickles; the ``ctypes``
    pointers are rebuilt when the buffers change.
    """

    def __init__(
        self,
        layers: list[tuple[nn.Linear, bool]],
        fallback: nn.Module,
        *,
        flatten_input: bool = False,
    ) -> None:
        super().__init__()
        shapes = [tuple(layer.weight.shape) for layer, _ in layers]
        for (rows, _), (_, cols) in zip(shapes[:-1], shapes[1:], strict=True):
            if cols != rows:
                raise ValueError(f"the chain's layers do not connect: {shapes}")
        self.fallback = fallback
        self.flatten_input = flatten_input  # the model flattens its input first
        self.relu = [bool(r) for _, r in layers]
        self.shapes = shapes
        for i, (layer, _) in enumerate(layers):
            weight = layer.weight.detach().float()
            csr = weight.to_sparse_csr()
            self.register_buffer(f"indptr{i}", csr.crow_indices().to(torch.int32))
            self.register_buffer(f"indices{i}", csr.col_indices().to(torch.int32))
            self.register_buffer(f"values{i}", csr.values().contiguous())
            bias = layer.bias.detach().float() if layer.bias is not None else torch.zeros(0)
            self.register_buffer(f"bias{i}", bias.contiguous())

    @property
    def nnz(self) -> int:
        """Nonzeros stored over the chain."""
        return sum(int(self.get_buffer(f"values{i}").numel()) for i in range(len(self.shapes)))

    def arrays(self, i: int) -> tuple[torch.Tensor, ...]:
        """Layer ``i``'s ``(indptr, indices, values, bias)`` (bias empty when there is none)."""
        return tuple(self.get_buffer(f"{k}{i}") for k in ("indptr", "indices", "values", "bias"))

    def _runnable(self) -> bool:
        """Whether the buffers are what the kernel reads: int32 and float32 on the CPU,
        contiguous (``.half()``, ``.double()`` or ``.cuda()`` make the chain use its
        fallback).  Raises when the arrays are not a valid CSR chain (a damaged file)."""
        for i, (rows, cols) in enumerate(self.shapes):
            indptr, indices, values, bias = self.arrays(i)
            kinds = (torch.int32, torch.int32, torch.float32, torch.float32)
            arrays = (indptr, indices, values, bias)
            if any(
                a.dtype != k or a.device.type != "cpu" for a, k in zip(arrays, kinds, strict=True)
            ):
                return False
            if not all(a.is_contiguous() for a in arrays):
                return False
            nnz = values.numel()
            valid = (
                indptr.shape == (rows + 1,)
                and int(indptr[0]) == 0
                and int(indptr[-1]) == nnz
                and bool((indptr[1:] >= indptr[:-1]).all())
                and indices.shape == (nnz,)
                and (nnz == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols))
                and bias.numel() in (0, rows)
            )
            if not valid:
                raise ValueError(
                    f"layer {i} of the fused chain is not a valid {rows}x{cols} CSR matrix; "
                    "the saved model may be damaged: export it again"
                )
        return True

    def _build(self) -> Any:
        """``(struct, kept arrays)`` for the current buffers, or None when they are not what
        the kernel reads; the tuple keeps every array it points into alive."""
        if not self._runnable():
            return None
        n = len(self.shapes)
        arrays = [self.arrays(i) for i in range(n)]

        def table(ctype: Any, values: list[Any]) -> Any:
            return (ctype * n)(*values)

        def pointers(kind: int) -> Any:
            return table(
                ctypes.c_void_p, [a[kind].data_ptr() if a[kind].numel() else None for a in arrays]
            )

        keep = [
            table(ctypes.c_int64, [r for r, _ in self.shapes]),
            table(ctypes.c_int64, [c for _, c in self.shapes]),
            pointers(0),
            pointers(1),
            pointers(2),
            pointers(3),
            table(ctypes.c_int32, [int(r) for r in self.relu]),
        ]
        return _Chain(n, *(ctypes.addressof(v) for v in keep)), keep, arrays

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lib = library()
        shape_ok = x.dim() == 2 or (self.flatten_input and x.dim() > 2)
        call = None
        if (
            lib is not None
            and shape_ok
            and x.shape[0] == 1
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled())
            and x.numel() == self.shapes[0][1]
        ):
            call = self._prepared()  # held for the whole call: it owns what C reads
        if call is None:
            return self.fallback(x)
        x = x.contiguous()
        out = torch.empty(1, self.shapes[-1][0], dtype=torch.float32)
        width = max(r for r, _ in self.shapes)
        work = torch.empty(2 * width, dtype=torch.float32)  # this call's own work space
        lib.csr_chain(
            ctypes.byref(call[0]),
            1,
            x.data_ptr(),
            out.data_ptr(),
            work.data_ptr(),
            work.data_ptr() + 4 * width,
        )
        return out

    def extra_repr(self) -> str:
        dense = sum(r * c for r, c in self.shapes)
        return f"layers={self.shapes}, relu={self.relu}, stored_density={self.nnz / dense:.4f}"


def reference_forward(chain: FusedSparseChain, x: torch.Tensor) -> torch.Tensor:
    """The chain's forward as a plain loop: scipy's CSR product, bias and ReLU per layer."""
    from scipy.sparse import csr_matrix

    h = x.reshape(x.shape[0], -1).double().numpy()
    for i, (shape, relu) in enumerate(zip(chain.shapes, chain.relu, strict=True)):
        indptr, indices, values, bias = (a.numpy() for a in chain.arrays(i))
        h = (csr_matrix((values.astype(np.float64), indices, indptr), shape=shape) @ h.T).T
        if bias.size:
            h = h + bias
        if relu:
            h = np.maximum(h, 0.0)
    return torch.from_numpy(h).float()
