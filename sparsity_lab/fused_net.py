"""A small dense network in one compiled call: shrunk CNNs at the speed their FLOPs allow.

A LeNet-5 with half its channels removed computes about 140,000 multiply-adds per example,
tens of microseconds of arithmetic, yet torch runs it at batch 1 in about a hundred: each
layer is a module call, a kernel dispatch and a tensor allocation.  That fixed cost does
not fall when channels are removed, and at larger batches torch's convolutions run three
or eight output channels at a fraction of their rate on wide layers; so a shrunk network
ran at under half of its ideal (FLOP) speed-up (``benchmarks/shrink_speed.py``).

:class:`CompiledNet` runs the whole forward pass in one call of a C function written for
the network (:func:`source_of`: the loops of :data:`KERNELS` called with the network's
sizes as constants), compiled with the system's compiler on first use (cached by source
under ``<cache>/kernels``) and called through ``ctypes``.  :func:`program_of` translates a
model by tracing it with ``torch.fx``; it knows convolutions (1-D and 2-D, any stride and
zero padding), Linear layers, ReLU, max-pooling without padding, additions of two tensors
(residual blocks), global average pooling and flattening.  BatchNorm must already be
folded into the convolution before it (:func:`sparsity_lab.inference.fold_batchnorm`);
any other operation makes the model untranslatable (None), and it runs as it is.

A batch runs a few examples at a time (as many as one vector register holds: 8 with
AVX2, else 4), their arrays interleaved so that every loop is vectorised along the
examples; the examples left over run one by one, each loop vectorised along its output
rows.  Every operation is a plain loop in the order the source gives it (no fast-math;
multiply-adds fused where the CPU has them), so outputs differ from torch's by float
rounding only.  The parameters are copies taken at translation (in the layouts the loops
read).
:func:`sparsity_lab.accel.export` keeps the compiled form only where it measures faster
than the per-layer model, and only for batches up to the one it was measured on
(``max_batch``); larger batches, other dtypes and devices, gradients and machines without a
compiler run the per-layer model it came from (``fallback``).
"""

from __future__ import annotations

import ctypes
import hashlib
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from . import inference, pooling
from .fused import CompiledCall, compiled

__all__ = [
    "CompiledNet",
    "KERNELS",
    "Program",
    "target",
    "library",
    "program_of",
    "source_of",
]

#: Operation codes of a program row.
CONV, MAXPOOL, ADD, RELU, MEAN, LINEAR = range(6)
#: Fields of a program row: the code, then ``in``, ``in2``, ``out`` (offsets into the work
#: arena, in floats), then the operation's own (see :func:`_call`).
FIELDS = 20

#: The operations, each a function of its arrays and sizes.  :func:`source_of` writes one
#: function per program that calls them with the program's sizes as constants, so that the
#: compiler unrolls and vectorises each loop for its own bounds (the same loops with sizes
#: read at run time take about three times as long).  A convolution first copies its input
#: into a zero-padded scratch, then adds each weight times a shifted row of the input to a
#: row of the output: the innermost loop runs along the output row.  A Linear layer keeps
#: its weight transposed for the same reason.
KERNELS = r"""
#include <stdint.h>
#include <string.h>
#define INLINE static inline __attribute__((always_inline))

INLINE float relu(float v) { return v < 0.0f ? 0.0f : v; }

/* LANES floats, one vector register (LANES is defined before these lines) */
typedef float vec __attribute__((vector_size(4 * LANES)));
typedef int32_t mask __attribute__((vector_size(4 * LANES)));

INLINE vec get(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
INLINE void put(float *p, vec v) { memcpy(p, &v, sizeof v); }
INLINE vec relu_v(vec v) { return (vec)(~(mask)(v < (vec){0}) & (mask)v); }  /* NaN stays */

/* the larger of two values, or the NaN: torch's max-pool propagates NaN */
INLINE float max1(float m, float v) { return v > m || v != v ? v : m; }
INLINE vec max_v(vec m, vec v)
{
    mask take = (v > m) | (v != v);
    return (vec)((take & (mask)v) | (~take & (mask)m));
}

/* the input (C maps of H x W values of L floats) with P zero rows and Q zero columns around
   each map, copied into pad; the input itself when there is no padding */
INLINE const float *padded(const float *in, float *pad, int64_t L, int64_t C, int64_t H,
                           int64_t W, int64_t P, int64_t Q)
{
    int64_t PH = H + 2 * P, PW = W + 2 * Q;
    if (!P && !Q)
        return in;
    memset(pad, 0, sizeof(float) * C * PH * PW * L);
    for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < H; ++y)
            memcpy(pad + ((c * PH + y + P) * PW + Q) * L, in + (c * H + y) * W * L,
                   sizeof(float) * W * L);
    return pad;
}

INLINE void conv(const float *in, float *out, float *pad, const float *w, const float *b,
                 int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                 int64_t SH, int64_t SW, int64_t P, int64_t Q, int act)
{
    int64_t PH = H + 2 * P, PW = W + 2 * Q;
    int64_t OH = (PH - KH) / SH + 1, OW = (PW - KW) / SW + 1;
    in = padded(in, pad, 1, C, H, W, P, Q);
    for (int64_t o = 0; o < O; ++o) {
        float *plane = out + o * OH * OW;
        float start = b ? b[o] : 0.0f;
        for (int64_t i = 0; i < OH * OW; ++i)
            plane[i] = start;
        for (int64_t c = 0; c < C; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
                for (int64_t kw = 0; kw < KW; ++kw) {
                    float wv = w[((o * C + c) * KH + kh) * KW + kw];
                    const float *src = in + (c * PH + kh) * PW + kw;
                    for (int64_t y = 0; y < OH; ++y)
                        for (int64_t x = 0; x < OW; ++x)
                            plane[y * OW + x] += wv * src[y * SH * PW + x * SW];
                }
        if (act)
            for (int64_t i = 0; i < OH * OW; ++i)
                plane[i] = relu(plane[i]);
    }
}

/* each value is L floats (L examples: 1 or LANES, a constant where it is called); windows
   clipped to the input (ceil mode) */
INLINE void maxpool(const float *in, float *out, int64_t L, int64_t C, int64_t H, int64_t W,
                    int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t OH, int64_t OW)
{
    for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < OH; ++y)
            for (int64_t x = 0; x < OW; ++x) {
                int64_t y0 = y * SH, x0 = x * SW;
                int64_t y1 = y0 + KH < H ? y0 + KH : H, x1 = x0 + KW < W ? x0 + KW : W;
                const float *at = in + ((c * H + y0) * W + x0) * L;
                float *to = out + ((c * OH + y) * OW + x) * L;
                if (L == LANES) {  /* L is a constant: the compiler keeps one branch */
                    vec m = get(at);
                    for (int64_t i = y0; i < y1; ++i)
                        for (int64_t j = x0; j < x1; ++j)
                            m = max_v(m, get(in + ((c * H + i) * W + j) * L));
                    put(to, m);
                } else {
                    float m = at[0];
                    for (int64_t i = y0; i < y1; ++i)
                        for (int64_t j = x0; j < x1; ++j)
                            m = max1(m, in[(c * H + i) * W + j]);
                    to[0] = m;
                }
            }
}

INLINE void add(const float *a, const float *b, float *out, int64_t n, int act)
{
    for (int64_t i = 0; i < n; ++i)
        out[i] = act ? relu(a[i] + b[i]) : a[i] + b[i];
}

INLINE void relu_all(const float *in, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        out[i] = relu(in[i]);
}

/* the mean of each channel; each value is L floats */
INLINE void mean(const float *in, float *out, int64_t L, int64_t C, int64_t HW)
{
    for (int64_t c = 0; c < C; ++c) {
        float s[LANES] = {0};
        for (int64_t i = 0; i < HW; ++i)
            for (int64_t l = 0; l < L; ++l)
                s[l] += in[(c * HW + i) * L + l];
        for (int64_t l = 0; l < L; ++l)
            out[c * L + l] = s[l] / (float)HW;
    }
}

/* wt: the weight transposed, I x O */
INLINE void linear(const float *in, float *out, const float *wt, const float *b,
                   int64_t I, int64_t O, int act)
{
    for (int64_t o = 0; o < O; ++o)
        out[o] = b ? b[o] : 0.0f;
    for (int64_t i = 0; i < I; ++i)
        for (int64_t o = 0; o < O; ++o)
            out[o] += in[i] * wt[i * O + o];
    if (act)
        for (int64_t o = 0; o < O; ++o)
            out[o] = relu(out[o]);
}

/* ---- LANES examples at once: every value is a vector of the examples' values (the arrays
   interleave the examples), so every loop is vectorised along the examples, whatever the
   layer's sizes; a convolution keeps four output channels' sums in registers while it
   reads each input vector once */

INLINE void conv_v(const float *in, float *out, float *pad, const float *w, const float *b,
                   int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                   int64_t SH, int64_t SW, int64_t P, int64_t Q, int act)
{
    int64_t PH = H + 2 * P, PW = W + 2 * Q;
    int64_t OH = (PH - KH) / SH + 1, OW = (PW - KW) / SW + 1;
    in = padded(in, pad, LANES, C, H, W, P, Q);
    for (int64_t o = 0; o < O; o += 4) {
        int64_t B = O - o < 4 ? O - o : 4;
        for (int64_t y = 0; y < OH; ++y)
            for (int64_t x = 0; x < OW; ++x) {
                vec acc[4];
                for (int64_t k = 0; k < 4; ++k)
                    acc[k] = (vec){0} + (b && k < B ? b[o + k] : 0.0f);
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t kh = 0; kh < KH; ++kh)
                        for (int64_t kw = 0; kw < KW; ++kw) {
                            vec v = get(in + ((c * PH + y * SH + kh) * PW + x * SW + kw) * LANES);
                            for (int64_t k = 0; k < 4; ++k)
                                if (k < B)
                                    acc[k] += w[(((o + k) * C + c) * KH + kh) * KW + kw] * v;
                        }
                for (int64_t k = 0; k < B; ++k)
                    put(out + (((o + k) * OH + y) * OW + x) * LANES, act ? relu_v(acc[k]) : acc[k]);
            }
    }
}

INLINE void linear_v(const float *in, float *out, const float *wt, const float *b,
                     int64_t I, int64_t O, int act)
{
    for (int64_t o = 0; o < O; o += 4) {
        int64_t B = O - o < 4 ? O - o : 4;
        vec acc[4];
        for (int64_t k = 0; k < 4; ++k)
            acc[k] = (vec){0} + (b && k < B ? b[o + k] : 0.0f);
        for (int64_t i = 0; i < I; ++i) {
            vec v = get(in + i * LANES);
            for (int64_t k = 0; k < 4; ++k)
                if (k < B)
                    acc[k] += wt[i * O + o + k] * v;
        }
        for (int64_t k = 0; k < B; ++k)
            put(out + (o + k) * LANES, act ? relu_v(acc[k]) : acc[k]);
    }
}
"""


def _call(row: list[int], lanes: int) -> str:
    """The C call of one program row (arrays as offsets into the arena ``a``, parameters
    as offsets into the parameters ``p``): the one-example loops, or with ``lanes > 1``
    the batched ones, whose arrays hold ``lanes`` values per element."""
    kind, v = row[0], "_v" if lanes > 1 else ""

    def at(f: int) -> str:
        return f"a + {row[f] * lanes}"

    def param(f: int) -> str:
        return "0" if row[f] < 0 else f"p + {row[f]}"

    if kind == CONV:
        sizes = ", ".join(str(n) for n in row[4:14])
        return f"conv{v}({at(1)}, {at(3)}, {at(17)}, {param(14)}, {param(15)}, {sizes}, {row[16]});"
    if kind == MAXPOOL:
        return f"maxpool({at(1)}, {at(3)}, {lanes}, {', '.join(str(n) for n in row[4:13])});"
    if kind == ADD:  # element by element: the same loop serves both layouts
        return f"add({at(1)}, {at(2)}, {at(3)}, {row[4] * lanes}, {row[5]});"
    if kind == RELU:
        return f"relu_all({at(1)}, {at(3)}, {row[4] * lanes});"
    if kind == MEAN:
        return f"mean({at(1)}, {at(3)}, {lanes}, {row[4]}, {row[5]});"
    return f"linear{v}({at(1)}, {at(3)}, {param(6)}, {param(7)}, {row[4]}, {row[5]}, {row[8]});"


def source_of(
    rows: list[list[int]], in_at: int, in_size: int, out_at: int, out_size: int, lanes: int
) -> str:
    """The C source of one program: :data:`KERNELS` and ``run_net``, which runs ``batch``
    examples through the rows in the caller's arena: ``lanes`` at a time with the batched
    loops (the examples interleaved into the arena and back), the rest one by one."""

    def body(n: int) -> str:
        return "\n".join(f"            {_call(row, n)}" for row in rows)

    return (
        f"#define LANES {lanes}\n"
        + KERNELS
        + f"""
void run_net(const float *p, int64_t batch, const float *x, float *y, float *a)
{{
    int64_t n = 0;
    for (; n + LANES <= batch; n += LANES) {{
        for (int64_t e = 0; e < {in_size}; ++e)
            for (int64_t l = 0; l < LANES; ++l)
                a[({in_at} + e) * LANES + l] = x[(n + l) * {in_size} + e];
{body(lanes)}
        for (int64_t e = 0; e < {out_size}; ++e)
            for (int64_t l = 0; l < LANES; ++l)
                y[(n + l) * {out_size} + e] = a[({out_at} + e) * LANES + l];
    }}
    for (; n < batch; ++n) {{
        memcpy(a + {in_at}, x + n * {in_size}, sizeof(float) * {in_size});
{body(1)}
        memcpy(y + n * {out_size}, a + {out_at}, sizeof(float) * {out_size});
    }}
}}
"""
    )


def target() -> tuple[tuple[str, ...], int]:
    """The compiler's flags and the batched loops' lanes for this CPU.

    ``-O3``: at ``-O2`` the loops along output rows are mostly not vectorised.  Where torch
    found AVX2, the code uses it with fused multiply-adds and runs 8 examples at once
    (32-byte registers); elsewhere 4 (16-byte SSE registers: wider vectors would be split
    through memory and run slower than one example at a time).
    """
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return ("-O3", "-Wno-psabi", "-mavx2", "-mfma"), 8
    return ("-O3", "-Wno-psabi"), 4


def library(source: str) -> ctypes.CDLL | None:
    """One program's compiled ``run_net``, or None when there is no C compiler."""
    flags = target()[0]
    name = "net-" + hashlib.sha256(f"{source}{flags}".encode()).hexdigest()[:16]
    lib = compiled(name, source, flags)
    if lib is not None and lib.run_net.argtypes is None:
        lib.run_net.restype = None
        lib.run_net.argtypes = [ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 3
    return lib


# ---------------------------------------------------------------------------- translation


class Program:
    """What :func:`program_of` found: the rows of the program, the parameters they
    read (float32, one after the other, each in the layout the C code expects; the rows
    hold their offsets), the arena's size and
    where the input and output live in it."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self.params: list[torch.Tensor] = []  # flat
        self.n_params = 0  # floats in them
        self.in_at = self.out_at = self.arena = 0
        self.in_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()

    def add_param(self, tensor: torch.Tensor | None) -> int:
        if tensor is None:
            return -1
        self.params.append(tensor.detach().float().reshape(-1).clone())
        self.n_params += self.params[-1].numel()
        return self.n_params - self.params[-1].numel()


_RELUS = (F.relu, torch.relu, F.relu_, torch.relu_)
_ADDS = (operator.add, torch.add)
_CONVS = (nn.Conv1d, nn.Conv2d, inference.Im2colConv2d)
_POOLS = (nn.MaxPool2d, inference.StridedMaxPool2d, pooling.MaxPool2x2)
_ALIASES = (nn.Identity, nn.Flatten, nn.Dropout)  # eval mode: dropout passes its input


def _conv_row(conv: nn.Module, shape: tuple[int, ...], program: Program) -> list[int] | None:
    """``conv``'s row fields (from ``C``), or None where the program cannot run it."""
    two_d = conv.weight.dim() == 4
    padding = conv.padding
    if (
        type(conv) not in _CONVS
        or conv.groups != 1
        or isinstance(padding, str)
        or conv.padding_mode != "zeros"
        or any(d != 1 for d in conv.dilation)
    ):
        return None
    if len(shape) != (3 if two_d else 2):
        return None  # an input without its batch dimension
    weight = conv.weight if two_d else conv.weight[:, :, None, :]
    c, h, w = shape if two_d else (shape[0], 1, shape[1])
    kh, kw = weight.shape[2:]
    sh, sw = conv.stride if two_d else (1, conv.stride[0])
    ph, pw = padding if two_d else (0, padding[0])
    fields = [c, h, w, conv.out_channels, kh, kw, sh, sw, ph, pw]
    return fields + [program.add_param(weight), program.add_param(conv.bias)]


class _Tracer(fx.Tracer):
    """fx's tracer, with the library's own convolution and pooling kernels kept whole (fx
    otherwise traces into any module that is not torch's)."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, _CONVS + _POOLS) or super().is_leaf_module(m, qualified_name)


def _pool_fields(kernel: Any, stride: Any, shape, out_shape) -> list[int] | None:
    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else tuple(v)

    if len(shape) != 3 or len(out_shape) != 3:
        return None
    (kh, kw), (sh, sw) = pair(kernel), pair(stride or kernel)
    c, h, w = shape
    return [c, h, w, kh, kw, sh, sw, out_shape[1], out_shape[2]]


def _is_mean(node: fx.Node, target: Any, shape, out_shape) -> bool:
    """``x.mean((2, 3))`` or ``torch.mean(x, (2, 3))`` over a ``(C, H, W)`` map: global
    average pooling."""
    if not (
        (node.op == "call_method" and target == "mean")
        or (node.op == "call_function" and target is torch.mean)
    ):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    other = {k: v for k, v in node.kwargs.items() if k != "dim"}
    return (
        len(shape) == 3
        and set(dims) in ({2, 3}, {-2, -1})
        and other in ({}, {"keepdim": False}, {"keepdim": True})
        and len(node.args) <= 2
        and out_shape[0] == shape[0]
    )


def _is_relu(node: fx.Node, target: Any) -> bool:
    if node.op == "call_method":
        return target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs
    return isinstance(target, nn.ReLU) or (node.op == "call_function" and target in _RELUS)


def _in_place(node: fx.Node, target: Any) -> bool:
    """Whether a ReLU overwrites its input (which other nodes may read after it)."""
    if isinstance(target, nn.ReLU):
        return target.inplace
    if target in (F.relu_, torch.relu_, "relu_"):
        return True
    return bool(node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False))


def _is_size(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()`` or an item of one: sizes, not arrays."""
    if "tensor_meta" in node.meta:
        return False
    if node.op == "call_method":
        return node.target == "size"
    return node.op == "call_function" and node.target in (getattr, operator.getitem)


def _is_reshape(node: fx.Node, target: Any) -> bool:
    """A flatten, view or reshape that keeps the batch (checked by the caller's sizes):
    the program's arrays are contiguous, so its output is its input."""
    if node.op == "call_method":
        return target in ("flatten", "view", "reshape", "contiguous")
    return node.op == "call_function" and target in (torch.flatten, torch.reshape)


def program_of(model: nn.Module, example: torch.Tensor) -> Program | None:
    """The program of ``model`` on inputs shaped like ``example``'s examples (float32), or
    None when the model holds anything the program does not run, or cannot be traced."""
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None  # a hook may change what a layer returns: the program would not see it
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
        # two examples, then one: every array must hold each example's values apart (a
        # reshape to (1, -1) would mix the batch, and at batch 1 looks harmless)
        ShapeProp(traced).propagate(example[:1].float().repeat(2, *[1] * (example.dim() - 1)))
        pairs = {n: n.meta.get("tensor_meta") for n in traced.graph.nodes}
        ShapeProp(traced).propagate(example[:1].float())
    except Exception:  # any tracing failure means: run the model as it is
        return None
    program = Program()
    where: dict[fx.Node, int] = {}  # node -> the buffer holding its value
    made_by: dict[int, fx.Node] = {}  # buffer -> the node whose row wrote it
    lives: list[list[int]] = []  # buffer -> [size, first row, last row]

    def shape_of(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        if not hasattr(meta, "shape") or meta.dtype != torch.float32 or meta.shape[0] != 1:
            return None
        pair = pairs.get(node)
        if not hasattr(pair, "shape") or tuple(pair.shape) != (2, *meta.shape[1:]):
            return None  # not one array per example
        return tuple(meta.shape[1:])

    def new_buffer(size: int) -> int:
        lives.append([size, len(program.rows), len(program.rows)])
        return len(lives) - 1

    def read(node: Any) -> int | None:
        if not isinstance(node, fx.Node) or node not in where:
            return None
        lives[where[node]][2] = len(program.rows)  # alive until the row about to be made
        return where[node]

    output = None
    for node in traced.graph.nodes:
        if node.op == "output":
            output = node.args[0]
            break
        if _is_size(node):
            continue  # read only by reshapes, whose output sizes are checked
        shape = shape_of(node)
        if shape is None:
            return None  # not a float32 tensor of one example
        size = int(torch.Size(shape).numel())
        if node.op == "placeholder":
            if where:
                return None  # a second input
            program.in_shape = shape
            where[node] = new_buffer(size)
            continue
        src = node.args[0] if node.args else None
        source, in_shape = read(src), shape_of(src)
        if source is None:
            return None
        target = traced.get_submodule(node.target) if node.op == "call_module" else node.target
        second = -1
        if isinstance(target, _CONVS):
            fields = _conv_row(target, in_shape, program)
            if fields is None:
                return None
            c, h, w, _, _, _, _, _, ph, pw = fields[:10]
            # the zero-padded copy of the input: a buffer alive for this row only
            pad = new_buffer(c * (h + 2 * ph) * (w + 2 * pw)) if ph or pw else 0
            kind, fields = CONV, [*fields, 0, pad]
        elif type(target) is nn.Linear:  # exactly: shrink's OffsetLinear adds to its output
            if len(in_shape) != 1:
                return None
            weight = program.add_param(target.weight.t())
            bias = program.add_param(target.bias)
            kind, fields = LINEAR, [in_shape[0], target.out_features, weight, bias, 0]
        elif _is_relu(node, target):
            last = program.rows[-1] if program.rows else None
            field = {CONV: 16, LINEAR: 8, ADD: 5}.get(last[0]) if last else None
            # only the sole reader of a row's own output may change it in place
            if field and last[3] == source and made_by.get(source) is src and len(src.users) == 1:
                last[field] = 1  # applied by the row that made its input
                where[node] = source
                continue
            if _in_place(node, target):  # every later reader of the input sees the ReLU
                if src.op == "placeholder":
                    return None  # in torch it changes the caller's tensor; a program cannot
                program.rows.append([RELU, source, -1, source, size] + [0] * (FIELDS - 5))
                where[node] = source
                continue
            kind, fields = RELU, [size]
        elif type(target) in _POOLS or target is pooling.max_pool_2x2:
            if isinstance(target, nn.Module):
                if target.padding not in (0, (0, 0)) or target.dilation not in (1, (1, 1)):
                    return None
                fields = _pool_fields(target.kernel_size, target.stride, in_shape, shape)
            else:
                fields = _pool_fields(2, 2, in_shape, shape)
            if fields is None:
                return None
            kind = MAXPOOL
        elif node.op == "call_function" and target in _ADDS:
            other = node.args[1] if len(node.args) == 2 and not node.kwargs else None
            if shape_of(other) != shape or in_shape != shape:
                return None  # broadcasting, a scalar, or alpha=
            second = read(other)
            kind, fields = ADD, [size, 0]
        elif _is_mean(node, target, in_shape, shape) or (
            isinstance(target, nn.AdaptiveAvgPool2d) and len(shape) == 3 and shape[1:] == (1, 1)
        ):
            kind, fields = MEAN, [in_shape[0], lives[source][0] // in_shape[0]]
        elif isinstance(target, _ALIASES) or _is_reshape(node, target):
            if size != lives[source][0]:
                return None
            where[node] = source  # the same floats in the same order
            continue
        else:
            return None
        out = new_buffer(size)
        row = [kind, source, second, out, *fields]
        row += [0] * (FIELDS - len(row))
        # the sizes the C loops will use must be the ones torch gave (say, a pool's output)
        sizes = _row_sizes(row)
        if sizes is None or sizes[0][1] != lives[source][0] or sizes[0][3] != size:
            return None
        program.rows.append(row)
        where[node], made_by[out] = out, node
    if not program.rows or output is None or read(output) is None or shape_of(output) is None:
        return None  # (a model without a row is cheaper left as it is)
    program.out_shape = shape_of(output)
    lives[where[output]][2] = len(program.rows)  # read after the last row
    _place(program, lives, where[next(iter(traced.graph.nodes))], where[output])
    return program


def _place(program: Program, lives: list[list[int]], first: int, last: int) -> None:
    """Give every buffer an offset in the arena; buffers alive at the same row never
    overlap (first fit, in order of creation), and the ids in the rows become offsets."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first row, last row)
    offsets = []
    for size, start, end in lives:
        clashes = sorted((o, s) for o, s, a, b in placed if a <= end and start <= b)
        offset = 0
        for o, s in clashes:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, start, end))
        offsets.append(offset)
    for row in program.rows:
        for field in (1, 3) + ((2,) if row[0] == ADD else ()) + ((17,) if row[0] == CONV else ()):
            row[field] = offsets[row[field]]
    program.arena = max((o + s for o, s, _, _ in placed), default=0)
    program.in_at, program.out_at = offsets[first], offsets[last]


# --------------------------------------------------------------------------------- module


def _row_sizes(row: list[int]) -> tuple[dict[int, int], dict[int, int]] | None:
    """``({field: floats read or written there}, {param field: floats})`` of a row, or None
    when its sizes do not make sense (a damaged file)."""
    kind = row[0]
    if kind == CONV:
        c, h, w, o, kh, kw, sh, sw, ph, pw = row[4:14]
        if min(c, h, w, o, kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
            return None
        padded_h, padded_w = h + 2 * ph, w + 2 * pw
        if kh > padded_h or kw > padded_w:
            return None
        oh, ow = (padded_h - kh) // sh + 1, (padded_w - kw) // sw + 1
        arrays = {1: c * h * w, 3: o * oh * ow}
        if ph or pw:
            arrays[17] = c * padded_h * padded_w
        return arrays, {14: o * c * kh * kw, 15: o}
    if kind == MAXPOOL:
        c, h, w, kh, kw, sh, sw, oh, ow = row[4:13]
        if min(c, h, w, kh, kw, sh, sw, oh, ow) < 1 or (oh - 1) * sh >= h or (ow - 1) * sw >= w:
            return None
        return {1: c * h * w, 3: c * oh * ow}, {}
    if kind in (ADD, RELU):
        return ({1: row[4], 2: row[4], 3: row[4]} if kind == ADD else {1: row[4], 3: row[4]}), {}
    if kind == MEAN:
        return ({1: row[4] * row[5], 3: row[4]}, {}) if min(row[4], row[5]) >= 1 else None
    if kind == LINEAR:
        return {1: row[4], 3: row[5]}, {6: row[4] * row[5], 7: row[5]}
    return None


class CompiledNet(CompiledCall):
    """A network whose forward, for batches up to ``max_batch``, is one call of its compiled
    program (:func:`program_of` translates it); ``fallback`` runs everything else.

    The parameters are copies taken at translation: changing the fallback's weights later
    (fine-tuning it) changes only the batches it runs, so export again instead.  The
    program's rows and parameters are buffers, so the module saves, loads, copies and
    pickles; the ``ctypes`` pointers are rebuilt, and the rows checked against the arena,
    whenever the buffers change.
    """

    def __init__(self, program: Program, fallback: nn.Module, *, max_batch: int = 1) -> None:
        super().__init__()
        self.fallback = fallback
        self.in_shape, self.out_shape = tuple(program.in_shape), tuple(program.out_shape)
        self.in_at, self.out_at, self.arena = program.in_at, program.out_at, program.arena
        self.max_batch = max_batch
        self.register_buffer("ops", torch.tensor(program.rows, dtype=torch.int64))
        # one buffer: the code reads every parameter at an offset from its start
        self.register_buffer("params", torch.cat([torch.zeros(0), *program.params]))
        self.training = False  # an inference module (its fallback's mode is left alone)

    def _layout(self) -> tuple:
        return (self.in_shape, self.out_shape, self.in_at, self.out_at, self.arena)

    def _runnable(self) -> bool:
        """Whether the buffers are what the program reads (int64 rows, float32 CPU
        parameters, contiguous: ``.double()`` or ``.cuda()`` make it use its fallback).
        Raises when a row would read or write outside its arrays (a damaged file)."""
        ops, params = self.ops, self.params
        for array, kind in ((ops, torch.int64), (params, torch.float32)):
            if array.dtype != kind or array.device.type != "cpu" or not array.is_contiguous():
                return False
        size = lambda shape: int(torch.Size(shape).numel())  # noqa: E731
        ends = [self.in_at + size(self.in_shape), self.out_at + size(self.out_shape)]
        valid = ops.dim() == 2 and ops.shape[1] == FIELDS and min(self.in_at, self.out_at) >= 0
        for row in ops.tolist() if valid else []:
            sizes = _row_sizes(row)
            if sizes is None:
                valid = False
                break
            arrays, weights = sizes
            valid &= all(row[f] >= 0 for f in arrays)
            ends += [row[f] + n for f, n in arrays.items()]
            for f, n in weights.items():
                optional = f in (7, 15) and row[f] == -1  # no bias
                valid &= optional or (0 <= row[f] and row[f] + n <= params.numel())
        if not valid or max(ends) > self.arena:
            raise ValueError(
                "the compiled network's program does not fit its arrays; the saved model may "
                "be damaged: export it again"
            )
        return True

    def _build(self) -> Any:
        """``(the compiled function, lanes, the parameters' address, the parameters)``, or
        None when the buffers are not what the program reads or there is no compiler."""
        if not self._runnable():
            return None
        lanes = target()[1]
        lib = library(self.source(lanes))
        return None if lib is None else (lib.run_net, lanes, self.params.data_ptr(), self.params)

    def source(self, lanes: int) -> str:
        """The C source of this network's program (:func:`source_of`)."""
        size = lambda shape: int(torch.Size(shape).numel())  # noqa: E731
        return source_of(self.ops.tolist(), self.in_at, size(self.in_shape), self.out_at,
                         size(self.out_shape), lanes)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = None
        if (
            not self.training  # dropout and batch statistics are the fallback's
            and 1 <= x.shape[0] <= self.max_batch
            and tuple(x.shape[1:]) == self.in_shape
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not (x.requires_grad and torch.is_grad_enabled())
        ):
            call = self._prepared()  # held for the whole call: it owns what C reads
        if call is None:
            return self.fallback(x)
        x = x.contiguous()
        out = torch.empty(x.shape[0], *self.out_shape, dtype=torch.float32)
        run, lanes, params = call[:3]
        wide = lanes if x.shape[0] >= lanes else 1  # the batched loops' arrays are wider
        arena = torch.empty(max(1, self.arena * wide), dtype=torch.float32)  # this call's own
        run(params, x.shape[0], x.data_ptr(), out.data_ptr(), arena.data_ptr())
        return out

    def extra_repr(self) -> str:
        return (
            f"rows={self.ops.shape[0]}, parameters={self.params.numel()}, "
            f"arena={self.arena} floats, max_batch={self.max_batch}"
        )
