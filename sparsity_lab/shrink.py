"""Physical removal: turn channel, input, head and layer masks into a smaller dense model.

A mask only multiplies weights by zero; the model still computes (and stores) every zero.
:func:`shrink` builds a new, smaller dense model that computes the same function: removed
output units take their rows out of the layer that writes them, their columns out of the
layers that read them and their entries out of the BatchNorm that follows; removed
attention heads leave q, k, v and the output projection; a residual block whose branch is
entirely gone keeps only its shortcut.  :func:`prune_coupled` chooses such groups
(channels of a residual group, heads, blocks) together, so that they can be removed.

**How shrink knows the structure.**  Removing a channel is only correct if *every* layer
that reads it is known, so the structure must be complete.  Any model torch.fx can trace is
walked through its graph (:func:`_plan_traced`): Linear and Conv layers write channels,
BatchNorm and per-channel operations pass them on, a residual ``+`` couples the channels
it adds, ``torch.cat`` lines channels up side by side, and anything else the walk does not
know fixes the channels that reach it (kept, which is always safe).  The tests check the
result against Torch-Pruning's dependency graph.  Three bundled models keep a written-out
structure, because tracing cannot find everything in them: the residual blocks of
``ResMLP`` and ``ResNetSmall`` (removed whole when their branch is empty) and the tiny
transformer (its attention unpacks ``x.shape``, which torch.fx cannot trace, and its heads
are groups of their own).  An ``nn.Sequential`` of Linear, Conv1d/Conv2d, BatchNorm,
element-wise activations, pooling and Flatten is handled without tracing, so it needs no
example input.

The structure has three kinds of groups:

* a :class:`Space` is a set of channels shared by the layers that *write* them (rows of a
  Linear/Conv weight and its bias; BatchNorm entries) and the layers that *read* them
  (columns of a weight; ``repeat`` columns per channel after a flatten).  A residual group
  is one space with several writers: the stem and every block that adds into the stream;
* :class:`Heads`: the heads of one attention layer (rows of q, k, v; columns of out);
* a :class:`Branch`: the residual branch of a block and the space or heads inside it.

Rules:

* a channel goes when *every* writer leaves it dead (zero weight rows) or *every* reader
  ignores it (zero columns).  In a residual group that is the intersection over all the
  blocks: one block that still writes the channel keeps it everywhere;
* a removed channel is not silent: its bias, BatchNorm shift and activation send a value
  that does not depend on the input.  shrink measures that value on an example batch and
  folds its contribution into the readers' biases.  After zero padding such a value is no
  longer constant over space (the borders see less of it), so a convolution then gets a
  fixed *offset map* added to its output (``OffsetConv2d``): exact for inputs of the
  example's size, which the bundled models fix;
* a head goes when its v rows are zero (it then outputs its v bias, whatever it attends to)
  or its columns of the output projection are zero;
* a layer never shrinks to zero width: a space keeps at least one channel, except the space
  inside a residual branch, whose block is then replaced by its shortcut plus the branch's
  fixed output (layer removal);
* fixed spaces never shrink: the model's input and output, and the tiny transformer's
  residual stream (LayerNorm mixes its channels).  Their zeros, and every unstructured,
  N:M, block, kernel or embedding zero, stay as zeros in the dense tensors.

Exactness holds in eval mode (BatchNorm with its running statistics); shrink checks it on
the example batch and raises if the outputs differ by more than ``TOLERANCE = 1e-5`` times
``max(1, largest |output|)``: 1e-5 absolute for outputs of order one (the tests hold every
bundled model to 1e-5 absolute), relative for large logits, where float32 rounding of a
reordered sum alone reaches 1e-5.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import criteria, masks, models, selection
from .patterns import Unstructured, check_sparsity, per_element, reduce_groups
from .pooling import max_pool_2x2

__all__ = [
    "Space",
    "Heads",
    "Branch",
    "Structure",
    "structure",
    "plan",
    "shrink",
    "prune_coupled",
    "OffsetLinear",
    "OffsetConv1d",
    "OffsetConv2d",
]

#: Largest difference between masked and shrunk outputs that shrink accepts, relative to
#: ``max(1, largest |output|)``.
TOLERANCE = 1e-5

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
#: How :func:`prune_coupled` hands a part's group scores to the selection: one per group.
UNSTRUCTURED = Unstructured()
# Layers that act on each channel separately (or not at all), so channels pass through them.
_PER_CHANNEL = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)


# ---------------------------------------------------------------------------------- structure


@dataclass
class Space:
    """Channels shared by the layers that write them and the layers that read them.

    ``writers``: Linear/Conv paths whose output rows are the channels; ``norms``: BatchNorm
    paths with one entry per channel; ``readers``: ``(path, repeat)`` for each layer that
    reads the channels as its inputs, ``repeat`` consecutive columns per channel (after a
    flatten).  ``fixed`` says why the channels cannot be removed ("" when they can).
    ``offsets`` says where the channels start among the inputs of a reader or the entries
    of a norm that also sees other channels (after a concatenation; default 0), and
    ``size`` is the number of channels when no writer tells it (a traced model's input).
    """

    name: str
    writers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    readers: list[tuple[str, int]] = field(default_factory=list)
    fixed: str = ""
    offsets: dict[str, int] = field(default_factory=dict)
    size: int | None = None


@dataclass
class Heads:
    """The heads of one attention layer at ``path`` (q, k, v and out Linear, ``n_heads``)."""

    path: str


@dataclass
class Branch:
    """A residual branch of the block at ``path``.

    ``inner`` names the space or heads inside it: when all of those go, the branch computes
    a fixed tensor, the output of module ``output``.  ``part`` tells the block's branches
    apart (``"attn"`` and ``"mlp"`` in a transformer block); ``into`` is the space the branch
    adds into (None when that space is fixed).
    """

    path: str
    part: str
    inner: str
    output: str
    into: str | None = None


@dataclass
class Structure:
    """The coupled groups of a model: spaces, attention heads and residual branches."""

    spaces: list[Space]
    heads: list[Heads] = field(default_factory=list)
    branches: list[Branch] = field(default_factory=list)

    def space(self, name: str) -> Space:
        """The space called ``name``."""
        for s in self.spaces:
            if s.name == name:
                return s
        raise KeyError(f"no space {name!r}; spaces: {[s.name for s in self.spaces]}")


def _chain(
    layers: list[str],
    norms: dict[str, str] | None = None,
    repeats: dict[str, int] | None = None,
) -> Structure:
    """A plain chain: each layer's outputs are read by the next layer only."""
    norms, repeats = norms or {}, repeats or {}
    spaces = [Space("input", readers=[(layers[0], 1)], fixed="the model's input")]
    for writer, reader in zip(layers[:-1], layers[1:], strict=True):
        spaces.append(
            Space(
                writer,
                [writer],
                [norms[writer]] if writer in norms else [],
                [(reader, repeats.get(reader, 1))],
            )
        )
    spaces.append(Space("output", [layers[-1]], fixed="the model's output"))
    return Structure(spaces)


def _flatten_repeat(model: nn.Module, conv: str, linear: str) -> int:
    """Columns per channel of ``linear`` after the flatten of ``conv``'s output."""
    channels = model.get_submodule(conv).out_channels
    features = model.get_submodule(linear).in_features
    if features % channels:
        raise ValueError(
            f"layer {linear!r} reads {features} features, not a whole number per channel of "
            f"{conv!r} ({channels} channels); shrink cannot map its columns to channels"
        )
    return features // channels


def _plan_resmlp(model: models.ResMLP) -> Structure:
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))]
    stream = Space(
        "stream",
        writers=["stem"] + [f"{b}.fc2" for b in blocks],
        readers=[(f"{b}.fc1", 1) for b in blocks] + [("head", 1)],
    )
    spaces = [Space("input", readers=[("stem", 1)], fixed="the model's input"), stream]
    branches = []
    for b in blocks:
        spaces.append(Space(f"{b}.fc1", [f"{b}.fc1"], readers=[(f"{b}.fc2", 1)]))
        branches.append(Branch(b, "branch", f"{b}.fc1", f"{b}.fc2", into="stream"))
    spaces.append(Space("output", ["head"], fixed="the model's output"))
    return Structure(spaces, branches=branches)


def _plan_resnet_small(model: models.ResNetSmall) -> Structure:
    spaces = [Space("input", readers=[("stem.0", 1)], fixed="the model's input")]
    current = Space("stem", ["stem.0"], ["stem.1"])
    branches = []
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            p = f"stages.{s}.{b}"
            spaces.append(Space(f"{p}.conv1", [f"{p}.conv1"], [f"{p}.bn1"], [(f"{p}.conv2", 1)]))
            current.readers.append((f"{p}.conv1", 1))
            if isinstance(block.shortcut, nn.Identity):
                # identity shortcut: the block adds into the same channels it reads
                current.writers.append(f"{p}.conv2")
                current.norms.append(f"{p}.bn2")
            else:
                current.readers.append((f"{p}.shortcut.0", 1))
                spaces.append(current)
                current = Space(
                    p, [f"{p}.conv2", f"{p}.shortcut.0"], [f"{p}.bn2", f"{p}.shortcut.1"]
                )
            branches.append(Branch(p, "branch", f"{p}.conv1", f"{p}.bn2", into=current.name))
    current.readers.append(("fc", 1))  # after the global average pool: one column per channel
    spaces += [current, Space("output", ["fc"], fixed="the model's output")]
    return Structure(spaces, branches=branches)


def _plan_tiny_transformer(model: models.TinyTransformer) -> Structure:
    blocks = [f"blocks.{i}" for i in range(len(model.blocks))]
    stream = Space(
        "stream",
        writers=[f"{b}.attn.out" for b in blocks] + [f"{b}.fc2" for b in blocks],
        readers=[(f"{b}.attn.{p}", 1) for b in blocks for p in "qkv"]
        + [(f"{b}.fc1", 1) for b in blocks]
        + [("head", 1)],
        fixed="the residual stream: LayerNorm mixes its channels, so none can go alone",
    )
    spaces = [stream]
    heads, branches = [], []
    for b in blocks:
        heads.append(Heads(f"{b}.attn"))
        spaces.append(Space(f"{b}.fc1", [f"{b}.fc1"], readers=[(f"{b}.fc2", 1)]))
        branches.append(Branch(b, "attn", f"{b}.attn", f"{b}.attn"))
        branches.append(Branch(b, "mlp", f"{b}.fc1", f"{b}.fc2"))
    spaces.append(Space("output", ["head"], fixed="the model's output"))
    return Structure(spaces, heads, branches)


def _plan_sequential(model: nn.Sequential) -> Structure:
    layers: list[str] = []
    norms: dict[str, str] = {}
    repeats: dict[str, int] = {}
    flatten_after: str | None = None
    for name, module in model.named_children():
        if isinstance(module, _WEIGHTED):
            if flatten_after is not None and isinstance(module, nn.Linear):
                repeats[name] = _flatten_repeat(model, flatten_after, name)
            flatten_after = None
            layers.append(name)
        elif isinstance(module, _NORMS):
            if not layers or layers[-1] in norms:
                raise ValueError(f"shrink expects BatchNorm {name!r} right after a Linear/Conv")
            norms[layers[-1]] = name
        elif isinstance(module, nn.Flatten):
            if layers and isinstance(model.get_submodule(layers[-1]), nn.modules.conv._ConvNd):
                flatten_after = layers[-1]
        elif not isinstance(module, _PER_CHANNEL):
            raise ValueError(
                f"shrink cannot follow channels through layer {name!r} "
                f"({type(module).__name__}) of the nn.Sequential: only Linear, Conv1d/Conv2d, "
                f"BatchNorm, Flatten and per-channel layers (activations, pooling, dropout) "
                f"are supported"
            )
    if not layers:
        raise ValueError("the nn.Sequential has no Linear or Conv layer: nothing to shrink")
    return _chain(layers, norms, repeats)


# ------------------------------------------------------------------------------- tracing


class _Spaces:
    """Union-find over channel spaces, filled while walking a traced graph."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.spaces: dict[str, Space] = {}

    def new(self, name: str, **fields: Any) -> str:
        self.parent[name] = name
        self.spaces[name] = Space(name, **fields)
        return name

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> str:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        keep, gone = self.spaces[a], self.spaces.pop(b)
        keep.writers += gone.writers
        keep.norms += gone.norms
        keep.readers += gone.readers
        keep.offsets.update(gone.offsets)
        keep.fixed = keep.fixed or gone.fixed
        keep.size = keep.size if keep.size is not None else gone.size
        self.parent[b] = a
        return a

    def fix(self, name: str, why: str) -> None:
        space = self.spaces[self.find(name)]
        space.fixed = space.fixed or why


# A traced tensor's channels, along dim 1: ``[(space, repeat), ...]`` in order (several
# after a concatenation; ``repeat`` > 1 after flattening a feature map).
Segments = list[tuple[str, int]]

_ELEMENTWISE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "add_", "mul_"}
_PER_CHANNEL_FUNCTIONS = {
    F.relu, torch.relu, F.gelu, F.silu, F.leaky_relu, F.elu, torch.sigmoid, torch.tanh,
    F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    max_pool_2x2,
}  # fmt: skip
_PER_CHANNEL_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "relu_"}


def _plan_traced(model: nn.Module, example: torch.Tensor) -> Structure:
    """The channel spaces of any model torch.fx can trace, from its graph.

    Linear and Conv layers write a new space and read the spaces of their input; BatchNorm
    and per-channel operations pass channels through; a residual ``+`` joins the spaces it
    adds (the same channel of both must go together); ``torch.cat`` along the channels
    lines spaces up side by side; flattening a feature map repeats each channel's columns.
    Channels that reach the output, or an operation this walk does not know, are fixed:
    shrink then keeps them, which is always safe.  Heads and whole blocks are not found
    this way (the bundled models' structures name them).
    """
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception as err:  # torch.fx raises several types, all meaning "not traceable"
        raise ValueError(
            f"shrink could not trace {type(model).__name__} with torch.fx ({type(err).__name__}: "
            f"{err}); a forward pass with data-dependent control flow or shape unpacking is "
            f"not traceable.  Build the model from traceable operations, or as an "
            f"nn.Sequential"
        ) from err
    ShapeProp(graph).propagate(example)
    spaces = _Spaces()
    segments: dict[Any, Segments] = {}

    def shape(node: Any) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()

    def tracked(args: Any) -> list[Any]:
        return (
            [a for a in torch.fx.node.map_arg(args, lambda n: n) if a in segments]
            if False
            else [a for a in _nodes_in(args) if a in segments]
        )

    def give_up(node: Any, why: str) -> None:
        for arg in tracked((node.args, node.kwargs)):
            for space, _ in segments[arg]:
                spaces.fix(space, f"its channels pass through {why} ({node.name}), which "
                                  f"shrink does not follow")  # fmt: skip

    def read(node: Any, path: str, source: Segments) -> None:
        if len({spaces.find(space) for space, _ in source}) < len(source):
            give_up(node, f"{path!r}, which reads the same channels twice")
            return
        offset = 0
        for space, repeat in source:
            root = spaces.spaces[spaces.find(space)]
            root.readers.append((path, repeat))
            root.offsets[path] = offset
            offset += _segment_width(model, root, repeat)

    for node in graph.graph.nodes:
        if node.op == "placeholder":
            size = shape(node)[1] if len(shape(node)) > 1 else 1
            segments[node] = [(spaces.new(f"input:{node.name}", size=size), 1)]
            spaces.fix(segments[node][0][0], "the model's input")
        elif node.op == "output":
            for arg in tracked(node.args):
                for space, _ in segments[arg]:
                    spaces.fix(space, "the model's output")
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            source = segments.get(node.args[0]) if node.args else None
            if isinstance(module, _WEIGHTED):
                grouped = isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1
                if source is not None and not grouped:
                    read(node, node.target, source)
                elif source is not None:
                    give_up(node, f"a grouped convolution {node.target!r}")
                segments[node] = [(spaces.new(node.target, writers=[node.target]), 1)]
                if grouped:
                    spaces.fix(node.target, f"{node.target!r} is a grouped convolution")
            elif isinstance(module, _NORMS) and source is not None:
                offset = 0
                for space, _ in source:
                    root = spaces.spaces[spaces.find(space)]
                    root.norms.append(node.target)
                    root.offsets[node.target] = offset
                    offset += _segment_width(model, root, 1)
                segments[node] = source
            elif isinstance(module, _PER_CHANNEL) and source is not None:
                segments[node] = source
            elif isinstance(module, nn.Flatten) and source is not None:
                segments[node] = _flattened(node, source, shape(node.args[0]), give_up)
            else:
                give_up(node, f"module {node.target!r} ({type(module).__name__})")
        elif node.op in ("call_function", "call_method"):
            target = node.target
            inputs = tracked(node.args)
            if not inputs:
                continue  # shapes, sizes and constants: no channels involved
            if target in _ELEMENTWISE or target in _ELEMENTWISE_METHODS:
                tensors = [a for a in _nodes_in(node.args) if shape(a)]
                if len(tensors) > len(inputs):
                    give_up(node, "an operation with a tensor shrink does not follow")
                    continue
                first = segments[inputs[0]]
                if any(
                    [
                        _segment_width(model, spaces.spaces[spaces.find(sp)], k)
                        for sp, k in segments[a]
                    ]
                    != [_segment_width(model, spaces.spaces[spaces.find(sp)], k) for sp, k in first]
                    for a in inputs[1:]
                ):
                    give_up(node, "an element-wise operation on differently split channels")
                    continue
                for other in inputs[1:]:
                    for (a, _), (b, _) in zip(first, segments[other], strict=True):
                        spaces.union(a, b)
                segments[node] = [(spaces.find(a), k) for a, k in first]
            elif target in _PER_CHANNEL_FUNCTIONS or target in _PER_CHANNEL_METHODS:
                segments[node] = segments[inputs[0]]
            elif target in (torch.cat, torch.concat):
                dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
                parts = node.args[0]
                if dim in (1, -len(shape(node)) + 1) and all(p in segments for p in parts):
                    segments[node] = [seg for p in parts for seg in segments[p]]
                else:
                    give_up(node, "a concatenation along another dimension than the channels")
            elif target in (torch.flatten, "flatten", "view", "reshape"):
                source = segments[inputs[0]]
                segments[node] = _flattened(node, source, shape(inputs[0]), give_up, shape(node))
            elif (
                target in (torch.mean, "mean")
                and len(shape(node)) >= 2
                and (shape(node)[1] == shape(inputs[0])[1])
            ):
                segments[node] = segments[inputs[0]]  # pooling over positions
            else:
                give_up(node, f"the operation {getattr(target, '__name__', target)}")
    found = list(spaces.spaces.values())
    for space in found:
        space.readers = list(dict.fromkeys(space.readers))
        space.norms = list(dict.fromkeys(space.norms))
    return Structure(found)


def _nodes_in(args: Any) -> list[Any]:
    """The graph nodes among (nested) arguments."""
    out: list[Any] = []
    torch.fx.node.map_arg(args, lambda n: out.append(n) or n)
    return out


def _segment_width(model: nn.Module, space: Space, repeat: int) -> int:
    """Input columns a space of channels takes in a reader: channels times ``repeat``."""
    return _space_size(model, space) * repeat


def _flattened(
    node: Any,
    source: Segments,
    before: tuple[int, ...],
    give_up: Callable[[Any, str], None],
    after: tuple[int, ...] | None = None,
) -> Segments | None:
    """Segments after flattening a (batch, channels, positions...) tensor to 2-D."""
    if len(before) <= 2 and (after is None or after == before):
        return source  # already (batch, features)
    if after is not None and (len(after) != 2 or after[0] != before[0]):
        give_up(node, "a reshape other than flattening each example")
        return None
    positions = math.prod(before[2:])
    return [(space, repeat * positions) for space, repeat in source]


_PLANS: dict[type, Callable[[Any], Structure]] = {
    models.ResMLP: _plan_resmlp,
    models.ResNetSmall: _plan_resnet_small,
    models.TinyTransformer: _plan_tiny_transformer,
    nn.Sequential: _plan_sequential,
}


def structure(model: nn.Module, example_input: torch.Tensor | None = None) -> Structure:
    """The coupled groups of ``model``.

    The bundled models and ``nn.Sequential`` have written-out structures (which also name
    their attention heads and residual blocks); any other model is traced with torch.fx on
    ``example_input`` (default: :func:`example_batch`), which finds its channel spaces
    through residual additions and concatenations.  Raises a ValueError naming the layer
    when a layer is not what the bundled model's structure expects, and one naming the
    reason when a model cannot be traced.
    """
    plan_fn = _PLANS.get(type(model))
    if plan_fn is None:
        x = example_batch(model) if example_input is None else example_input
        found = _plan_traced(model, x)
        _check_layers(model, found)
        return found
    found = plan_fn(model)
    _check_layers(model, found)
    return found


def _check_layers(model: nn.Module, found: Structure) -> None:
    def expect(path: str, kinds: tuple[type, ...], what: str) -> None:
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"shrink expects a layer {path!r} in the model, found none") from None
        if not isinstance(layer, kinds):
            raise ValueError(
                f"shrink expects layer {path!r} to be {what}, found {type(layer).__name__}; "
                f"shrink only follows the layers of the model as sparsity_lab builds it"
            )
        if isinstance(layer, nn.modules.conv._ConvNd) and layer.groups != 1:
            raise ValueError(
                f"layer {path!r} is a grouped convolution (groups={layer.groups}); shrink "
                f"only removes channels of ungrouped convolutions"
            )

    for s in found.spaces:
        for p in s.writers + [r for r, _ in s.readers]:
            expect(p, _WEIGHTED, "a Linear, Conv1d or Conv2d")
        for p in s.norms:
            expect(p, _NORMS, "a BatchNorm")
    for h in found.heads:
        expect(h.path, (models.MultiHeadSelfAttention,), "a MultiHeadSelfAttention")
        for p in "qkvo":
            expect(f"{h.path}.{'out' if p == 'o' else p}", (nn.Linear,), "a Linear")


# ---------------------------------------------------------------------------- what can go


def _rows_zero(layer: nn.Module) -> torch.Tensor:
    """Per output unit: are all its weights zero?"""
    return (layer.weight.detach() == 0).flatten(1).all(dim=1)


def _columns_zero(
    layer: nn.Module, repeat: int, offset: int = 0, size: int | None = None
) -> torch.Tensor:
    """Per input channel (``repeat`` columns each): are all its weights zero?

    ``offset`` and ``size`` select the ``size`` channels that start at input column
    ``offset`` (a reader of a concatenation); by default every input."""
    w = layer.weight.detach() == 0
    per_input = w.transpose(0, 1).flatten(1).all(dim=1)  # (in_features or in_channels,)
    if size is not None:
        per_input = per_input[offset : offset + size * repeat]
    return per_input.reshape(-1, repeat).all(dim=1)


def _head_slices(attn: models.MultiHeadSelfAttention) -> tuple[int, int]:
    return attn.n_heads, attn.q.out_features // attn.n_heads


def _removable_heads(attn: models.MultiHeadSelfAttention) -> torch.Tensor:
    n, d = _head_slices(attn)
    v_dead = _rows_zero(attn.v).reshape(n, d).all(dim=1)
    out_unread = _columns_zero(attn.out, d)
    return v_dead | out_unread


@dataclass
class _Removal:
    """What shrink removes: channels per space, heads per attention, whole branches."""

    channels: dict[str, torch.Tensor]  # space name -> bool (True = removed)
    heads: dict[str, torch.Tensor]  # attention path -> bool per head
    branches: list[Branch]  # branches replaced by their fixed output
    notes: dict[str, str]


def _removal(model: nn.Module, found: Structure) -> _Removal:
    heads = {h.path: _removable_heads(model.get_submodule(h.path)) for h in found.heads}
    inner_of = {b.inner: b for b in found.branches}
    channels: dict[str, torch.Tensor] = {}
    notes: dict[str, str] = {}
    # Branches first: a branch empties when everything inside it can go.
    gone: list[Branch] = []
    for b in found.branches:
        if b.inner in heads:
            empty = bool(heads[b.inner].all())
        else:
            empty = bool(_space_removable(model, found.space(b.inner), set()).all())
        if empty:
            gone.append(b)
    dropped = {p for b in gone for p in _branch_layers(found, b)}
    for s in found.spaces:
        if s.fixed:
            notes[s.name] = s.fixed
            continue
        removable = _space_removable(model, s, dropped)
        if s.name in inner_of and inner_of[s.name] in gone:
            channels[s.name] = torch.ones_like(removable)
            continue
        if removable.all():
            # a layer never shrinks to zero width: keep the first channel
            removable = removable.clone()
            removable[0] = False
            notes[s.name] = "keeps one channel: a layer cannot have zero width"
        channels[s.name] = removable
    for b in gone:
        if b.inner in heads:
            heads[b.inner] = torch.ones_like(heads[b.inner])
    return _Removal(channels, heads, gone, notes)


def _space_removable(model: nn.Module, s: Space, dropped: set[str]) -> torch.Tensor:
    """Channels of ``s`` that every live writer leaves dead or every live reader ignores."""
    writers = [w for w in s.writers if w not in dropped]
    readers = [(r, k) for r, k in s.readers if r not in dropped]
    size = _space_size(model, s)
    dead = torch.ones(size, dtype=torch.bool)
    for w in writers:
        dead &= _rows_zero(model.get_submodule(w))
    unread = torch.ones(size, dtype=torch.bool)
    for r, k in readers:
        unread &= _columns_zero(model.get_submodule(r), k, s.offsets.get(r, 0), size)
    if not s.writers:  # channels nobody writes (the model's input) are not dead
        dead[:] = False
    return dead | unread


def _space_size(model: nn.Module, s: Space) -> int:
    if s.size is not None:
        return s.size
    if s.writers:
        return model.get_submodule(s.writers[0]).weight.shape[0]
    path, repeat = s.readers[0]
    return model.get_submodule(path).weight.shape[1] // repeat


def _branch_layers(found: Structure, b: Branch) -> list[str]:
    """Weighted layers inside branch ``b`` (they vanish with it)."""
    if any(h.path == b.inner for h in found.heads):
        return [f"{b.inner}.{p}" for p in ("q", "k", "v", "out")]
    s = found.space(b.inner)
    return list(dict.fromkeys(s.writers + [r for r, _ in s.readers]))


def plan(model: nn.Module) -> pd.DataFrame:
    """What :func:`shrink` would remove: one row per space, attention layer and branch.

    Columns: group, kind (channels, heads or branch), size, removed, kept, note, and
    indices: the removed channels or heads, as positions in the unshrunk group.
    """
    work = _squashed(model)
    found = structure(work)
    removal = _removal(work, found)
    rows = []
    for s in found.spaces:
        size = _space_size(work, s)
        flags = removal.channels.get(s.name, torch.zeros(size, dtype=torch.bool))
        note = removal.notes.get(s.name, "")
        rows.append(
            {
                "group": s.name,
                "kind": "channels",
                "size": size,
                "removed": int(flags.sum()),
                "note": note,
                "indices": torch.nonzero(flags).flatten().tolist(),
            }
        )
    for h in found.heads:
        flags = removal.heads[h.path]
        rows.append(
            {
                "group": h.path,
                "kind": "heads",
                "size": len(flags),
                "removed": int(flags.sum()),
                "note": "",
                "indices": torch.nonzero(flags).flatten().tolist(),
            }
        )
    for b in found.branches:
        gone = b in removal.branches
        label = b.path if b.part == "branch" else f"{b.path} ({b.part})"
        note = "replaced by its fixed output" if gone else ""
        rows.append(
            {
                "group": label,
                "kind": "branch",
                "size": 1,
                "removed": int(gone),
                "note": note,
                "indices": [0] if gone else [],
            }
        )
    df = pd.DataFrame(rows, columns=["group", "kind", "size", "removed", "note", "indices"])
    df.insert(4, "kept", df["size"] - df["removed"])
    return df


# --------------------------------------------------------------------------- layers it uses


class OffsetLinear(nn.Linear):
    """A Linear plus a fixed ``offset`` tensor added to its output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.offset


def _add_offset(layer: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """``out + layer.offset``, refusing an output of another size than the offset map's.

    The map was measured at the example input's size; at another size the borders fall
    elsewhere, and broadcasting would add a wrong map without a word (a size of 1 broadcasts
    silently).
    """
    if out.shape[2:] != layer.offset.shape[1:]:
        raise ValueError(
            f"{type(layer).__name__} adds an offset map measured for outputs of size "
            f"{tuple(layer.offset.shape[1:])}, got {tuple(out.shape[2:])}: a shrunk model "
            "whose removed channels fed zero padding is exact only for inputs of the size "
            "it was shrunk with; shrink again with an example input of this size"
        )
    return out + layer.offset


class OffsetConv1d(nn.Conv1d):
    """A Conv1d plus a fixed ``offset`` map (channels x length) added to its output.

    It carries what removed, input-independent channels contributed through zero padding;
    it takes only inputs of the size it was made for.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _add_offset(self, super().forward(x))


class OffsetConv2d(nn.Conv2d):
    """A Conv2d plus a fixed ``offset`` map (channels x height x width) added to its output.

    It carries what removed, input-independent channels contributed through zero padding;
    it takes only inputs of the size it was made for.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _add_offset(self, super().forward(x))


_OFFSET = {nn.Linear: OffsetLinear, nn.Conv1d: OffsetConv1d, nn.Conv2d: OffsetConv2d}


class _FixedResidualMLPBlock(nn.Module):
    """A residual MLP block whose branch was removed: ``relu(x + value)``."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.value)


class _FixedBasicBlock(nn.Module):
    """A ResNet basic block whose branch was removed: ``relu(shortcut(x) + value)``."""

    def __init__(self, shortcut: nn.Module, value: torch.Tensor) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.value)


class _PartialTransformerBlock(nn.Module):
    """A transformer block with its attention and/or MLP sublayer replaced by a fixed tensor."""

    def __init__(
        self,
        block: models.TransformerBlock,
        attn_value: torch.Tensor | None,
        mlp_value: torch.Tensor | None,
    ) -> None:
        super().__init__()
        if attn_value is None:
            self.ln1, self.attn = block.ln1, block.attn
        if mlp_value is None:
            self.ln2, self.fc1, self.fc2 = block.ln2, block.fc1, block.fc2
        self.register_buffer("attn_value", attn_value)
        self.register_buffer("mlp_value", mlp_value)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.attn_value is None:
            x = x + self.attn(self.ln1(x), key_padding_mask)
        else:
            x = x + self.attn_value
        if self.mlp_value is None:
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x + self.mlp_value


# ------------------------------------------------------------------------------ measurement


def _squashed(model: nn.Module) -> nn.Module:
    """An independent copy of ``model`` with its masks made permanent (plain zeros)."""
    work = copy.deepcopy(model)
    masks.squash(work)
    for path, module in work.named_modules():
        if parametrize.is_parametrized(module):
            raise ValueError(
                f"layer {path!r} has parametrizations other than sparsity_lab masks; remove "
                f"them (torch.nn.utils.parametrize.remove_parametrizations) before shrink"
            )
    return work


def example_batch(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A small random batch for ``model.input_shape`` (token ids from 1 for an embedding).

    Drawn from its own generator, so the global random state is left alone.
    """
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "shrink needs an example batch to measure what removed channels send: pass "
            "example_input=... (or give the model an `input_shape` attribute)"
        )
    gen = torch.Generator().manual_seed(seed)
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if embeddings:
        high = embeddings[0].num_embeddings
        return torch.randint(1, max(2, high), (batch, *shape), generator=gen)
    return torch.randn(batch, *shape, generator=gen)


def _record(
    model: nn.Module, x: torch.Tensor, inputs: Iterable[str], outputs: Iterable[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Run ``model`` (eval, no grad) on ``x``; return inputs and outputs of named layers."""
    seen_in: dict[str, torch.Tensor] = {}
    seen_out: dict[str, torch.Tensor] = {}
    handles = []
    for path in set(inputs):

        def pre(mod, args, path=path):
            seen_in[path] = args[0].detach()

        handles.append(model.get_submodule(path).register_forward_pre_hook(pre))
    for path in set(outputs):

        def post(mod, args, out, path=path):
            seen_out[path] = out.detach()

        handles.append(model.get_submodule(path).register_forward_hook(post))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return seen_in, seen_out, y


def _fixed_value(t: torch.Tensor, what: str, channel_dim: int) -> torch.Tensor:
    """The per-example value of ``t`` (batch first), which must not depend on the example.

    Dimensions other than ``channel_dim`` (of one example) along which the value is constant
    are reduced to size 1, so that it broadcasts.
    """
    scale = 1.0 + float(t.abs().max()) if t.numel() else 1.0
    first = t[:1]
    if float((t - first).abs().max()) > 1e-4 * scale:
        raise RuntimeError(
            f"{what} should not depend on the input once its channels are removed, but it "
            f"does; the structure of this model is incomplete (please report it)"
        )
    value = first[0]
    channel_dim %= value.dim()
    for dim in range(value.dim()):
        if dim == channel_dim:
            continue
        mean = value.mean(dim=dim, keepdim=True)
        if float((value - mean).abs().max()) <= 1e-6 * scale:
            value = mean
    return value


def _channel_dim(layer: nn.Module) -> int:
    """Where a layer's output channels are in one example: last for Linear, first else."""
    return -1 if isinstance(layer, (nn.Linear, models.MultiHeadSelfAttention)) else 0


def _fold(layer: nn.Module, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """What input ``columns`` (bool, per input feature/channel) add to ``layer``'s output."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return F.linear(x[..., columns], w[:, columns])
    return layer._conv_forward(x[:, columns], w[:, columns], None)


def _add_to_output(layer: nn.Module, value: torch.Tensor) -> None:
    """Add a fixed per-example ``value`` to ``layer``'s output: into the bias when it is
    the same at every position, else as an offset map."""
    out = layer.weight.shape[0]
    if value.numel() == out:  # constant over every position: a bias
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(out, dtype=value.dtype, device=value.device))
        with torch.no_grad():
            layer.bias.add_(value.reshape(out))
    elif isinstance(layer, tuple(_OFFSET.values())):
        layer.offset = layer.offset + value
    else:
        layer.__class__ = _OFFSET[type(layer)]
        layer.register_buffer("offset", value.clone())
        if isinstance(layer, nn.Conv1d | nn.Conv2d):
            warnings.warn(
                f"shrink folded removed channels into an offset map of size "
                f"{tuple(value.shape[1:])} (their constant output crossed zero padding): the "
                "shrunk model now takes only inputs of the example's size",
                stacklevel=3,
            )


# ------------------------------------------------------------------------------- slicing


def _slice_rows(layer: nn.Module, keep: torch.Tensor) -> None:
    idx = torch.nonzero(keep).flatten()
    layer.weight = nn.Parameter(layer.weight.detach()[idx].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[idx].clone())
    if isinstance(layer, tuple(_OFFSET.values())):
        layer.offset = layer.offset.index_select(_channel_dim(layer), idx)
    if isinstance(layer, nn.Linear):
        layer.out_features = len(idx)
    else:
        layer.out_channels = len(idx)


def _slice_columns(layer: nn.Module, keep: torch.Tensor, repeat: int) -> None:
    idx = torch.nonzero(keep.repeat_interleave(repeat)).flatten()
    layer.weight = nn.Parameter(layer.weight.detach()[:, idx].clone())
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> None:
    idx = torch.nonzero(keep).flatten()
    for name in ("weight", "bias"):
        if getattr(norm, name) is not None:
            setattr(norm, name, nn.Parameter(getattr(norm, name).detach()[idx].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(norm, name) is not None:
            setattr(norm, name, getattr(norm, name)[idx].clone())
    norm.num_features = len(idx)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------------- shrink


def shrink(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A new, smaller dense model computing what the masked ``model`` computes (eval mode).

    ``model`` is left untouched.  ``example_input`` (a batch) is used to measure the fixed
    values that removed channels send and to check the result; by default a random batch
    of two examples of ``model.input_shape``.  The shrunk model has no masks; zeros that
    cannot be removed (unstructured, N:M, ...) stay as zeros.  See the module docstring for
    the rules, and :func:`plan` for what will be removed.
    """
    work = _squashed(model)
    x = example_batch(model) if example_input is None else example_input
    work.eval()
    found = structure(work, x)
    removal = _removal(work, found)
    gone = {p for b in removal.branches for p in _branch_layers(found, b)}
    # 1. measure, on the unchanged model, what every removed channel, head or branch sends
    deltas, values, reference = _measure(work, found, removal, gone, x)
    # 2. fold what removed inputs send into their readers, at full size
    for r, value in deltas:
        _add_to_output(work.get_submodule(r), value)
    # 3. slice rows, columns and BatchNorm entries; 4. replace the emptied blocks
    _slice(work, found, removal, gone)
    _replace_blocks(work, found, removal, values)
    _check_close(work, x, reference)
    work.train(model.training)
    return work


def _measure(
    work: nn.Module, found: Structure, removal: _Removal, gone: set[str], x: torch.Tensor
) -> tuple[list[tuple[str, torch.Tensor]], dict[tuple[str, str], torch.Tensor], torch.Tensor]:
    """Fixed values: what removed inputs add to each reader, and each gone branch's output.

    Returns ``(deltas, values, reference)``: ``[(reader, value)]``, ``{(block, part):
    value}`` and the model's output on ``x``.
    """
    folds: list[tuple[str, torch.Tensor]] = []  # (reader, removed input columns)
    for s in found.spaces:
        removed = removal.channels.get(s.name)
        if removed is None or not removed.any():
            continue
        folds += [
            (r, _full_width(work.get_submodule(r), s, r, removed.repeat_interleave(k)))
            for r, k in s.readers
            if r not in gone
        ]
    for h in found.heads:
        removed = removal.heads[h.path]
        if removed.any() and f"{h.path}.out" not in gone:
            d = _head_slices(work.get_submodule(h.path))[1]
            folds.append((f"{h.path}.out", removed.repeat_interleave(d)))
    outputs = [b.output for b in removal.branches]
    seen_in, seen_out, reference = _record(work, x, [r for r, _ in folds], outputs)
    deltas = []
    for r, columns in folds:
        layer = work.get_submodule(r)
        delta = _fold(layer, seen_in[r], columns)
        value = _fixed_value(delta, f"what the removed inputs of {r!r} send", _channel_dim(layer))
        if value.any():  # inputs removed because nobody read them send nothing
            deltas.append((r, value))
    values = {}
    for b in removal.branches:
        dim = _channel_dim(work.get_submodule(b.output))
        values[(b.path, b.part)] = _fixed_value(
            seen_out[b.output], f"the branch of {b.path!r}", dim
        )
    return deltas, values, reference


def _full_width_mask(width: int, s: Space, path: str, part: torch.Tensor) -> torch.Tensor:
    """``part`` (a mask over the entries of space ``s`` at ``path``) placed at its offset in
    a mask of ``width`` entries, False elsewhere."""
    full = torch.zeros(width, dtype=torch.bool)
    offset = s.offsets.get(path, 0)
    full[offset : offset + len(part)] = part
    return full


def _full_width(layer: nn.Module, s: Space, path: str, part: torch.Tensor) -> torch.Tensor:
    """``part`` over the input columns of ``layer`` that space ``s`` feeds, full width."""
    return _full_width_mask(layer.weight.shape[1], s, path, part)


def _slice(work: nn.Module, found: Structure, removal: _Removal, gone: set[str]) -> None:
    """Take the removed channels and heads out of every layer that holds them."""
    # A reader or a norm may see several spaces (after a concatenation): gather its full
    # keep mask first and slice it once, so that one space's cut does not shift another's.
    columns: dict[str, torch.Tensor] = {}
    entries: dict[str, torch.Tensor] = {}
    for s in found.spaces:
        removed = removal.channels.get(s.name)
        if removed is None or not removed.any():
            continue
        keep = ~removed
        for w in s.writers:
            if w not in gone:
                _slice_rows(work.get_submodule(w), keep)
        for n in s.norms:
            norm = work.get_submodule(n)
            full = entries.setdefault(n, torch.ones(norm.num_features, dtype=torch.bool))
            full &= ~_full_width_mask(norm.num_features, s, n, removed)
        for r, k in s.readers:
            if r not in gone:
                layer = work.get_submodule(r)
                full = columns.setdefault(r, torch.ones(layer.weight.shape[1], dtype=torch.bool))
                full &= ~_full_width(layer, s, r, removed.repeat_interleave(k))
    for n, keep in entries.items():
        _slice_norm(work.get_submodule(n), keep)
    for r, keep in columns.items():
        _slice_columns(work.get_submodule(r), keep, 1)
    for h in found.heads:
        removed = removal.heads[h.path]
        if not removed.any() or f"{h.path}.out" in gone:
            continue
        attn = work.get_submodule(h.path)
        keep = (~removed).repeat_interleave(_head_slices(attn)[1])
        for p in (attn.q, attn.k, attn.v):
            _slice_rows(p, keep)
        _slice_columns(attn.out, keep, 1)
        attn.n_heads = int((~removed).sum())


def _replace_blocks(
    work: nn.Module,
    found: Structure,
    removal: _Removal,
    values: dict[tuple[str, str], torch.Tensor],
) -> None:
    by_block: dict[str, dict[str, torch.Tensor]] = {}
    for b in removal.branches:
        value = values[(b.path, b.part)]
        if b.into in removal.channels:
            # the fixed output adds into a space that lost channels: keep the same ones
            keep = torch.nonzero(~removal.channels[b.into]).flatten()
            value = value.index_select(_channel_dim(work.get_submodule(b.output)), keep)
        by_block.setdefault(b.path, {})[b.part] = value
    for path, parts in by_block.items():
        block = work.get_submodule(path)
        if isinstance(block, models.ResidualMLPBlock):
            new: nn.Module = _FixedResidualMLPBlock(parts["branch"])
        elif isinstance(block, models.BasicBlock):
            new = _FixedBasicBlock(block.shortcut, parts["branch"])
        elif isinstance(block, models.TransformerBlock):
            new = _PartialTransformerBlock(block, parts.get("attn"), parts.get("mlp"))
        else:  # pragma: no cover - the structures above only name these blocks
            raise ValueError(f"shrink cannot replace block {path!r} ({type(block).__name__})")
        _set_module(work, path, new)


def _check_close(work: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> None:
    with torch.no_grad():
        out = work(x)
    diff = float((out - reference).abs().max()) if out.shape == reference.shape else math.inf
    tolerance = TOLERANCE * max(1.0, float(reference.abs().max()))
    if diff > tolerance:
        raise RuntimeError(
            f"the shrunk {type(work).__name__} differs from the masked model by {diff:.3g} on "
            f"the example batch (tolerance {tolerance:.3g}); its structure is incomplete "
            f"(please report it)"
        )


# ------------------------------------------------------------------------- coupled pruning


def prune_coupled(
    model: nn.Module,
    granularity: str,
    sparsity: float,
    *,
    method: str = "magnitude",
    data: Any = None,
    reduction: str = "l2",
    dense_grad: bool = False,
    seed: int = 0,
    example_input: torch.Tensor | None = None,
    group_members: str = "writers",
    tracker: Any = None,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Prune groups that span several tensors, in place, so :func:`shrink` can remove them.

    ``granularity``:

    * ``"channel"``: in every space that is not fixed (see :func:`structure`), the fraction
      ``sparsity`` of its channels, chosen on the scores of *all* the rows that write them,
      so that a residual group loses the same channels in every block (the norm of a filter
      as in Li et al. 2017; the coupling as in Fang et al. 2023, DepGraph).  As in Li et al.
      the channel goes whole: the writers' rows *and* the readers' columns are masked, so
      the channel's constant output (its bias, its BatchNorm shift) no longer reaches the
      next layers.  Every space keeps one channel;
    * ``"head"``: the fraction ``sparsity`` of all attention heads, ranked across layers
      (Michel et al. 2019), each scored on its rows of q, k, v and its columns of out,
      which are all masked;
    * ``"layer"``: the fraction ``sparsity`` of the residual blocks, ranked across the model,
      each scored per element over all its branch weights, which are all masked.

    ``sparsity`` counts groups, not parameters.  Scores come from criterion ``method``
    (``options`` go to its constructor, ``data`` to its context) and are reduced with
    ``reduction``.  ``group_members`` says which elements score a channel: ``"writers"``
    (the default) the rows that write it; ``"all"`` also the columns that read it and the
    scales of the BatchNorm that normalises it, every element of the group, as Torch-Pruning
    scores a dependency group (it reduces each member to a norm and averages the members;
    here the reduction runs over all the group's elements at once).  Heads and layers are
    always scored on all their members.  Masks only shrink: groups pruned before stay
    pruned.  Returns the new keep-masks by tensor name.  ``tracker`` goes to the criterion's
    context, as in :func:`sparsity_lab.prune`.  ``example_input`` is needed only
    to trace a model that is neither bundled nor an ``nn.Sequential`` and has no
    ``input_shape`` (see :func:`structure`).
    """
    check_sparsity(sparsity)
    if group_members not in GROUP_MEMBERS:
        raise ValueError(
            f"group_members must be one of {', '.join(GROUP_MEMBERS)}, got {group_members!r}"
        )
    found = structure(model, example_input)
    groups = _coupled_groups(model, found, granularity, group_members)
    names = list(dict.fromkeys(m.name for part in groups for g in part for m in g))
    if not names:
        raise ValueError(f"{type(model).__name__} has no {granularity} groups to prune")
    criterion = criteria.get(method, **options)
    context = criteria.Context(data=data, seed=seed, tracker=tracker)
    if criterion.needs_data and data is None:
        raise ValueError(f"criterion {method!r} needs data: pass data=...")
    with torch.enable_grad():
        scores = criterion.scores(model, names, context)
    current = {n: _keep_of(model, n) for n in names}

    masked = dict.fromkeys(m.name for part in groups for g in part for m in g if m.masked)
    new_masks = {n: current[n].clone() for n in masked}
    for part in groups:  # one ranking per part: a space, or the whole model
        group_scores, alive = [], []
        for members in part:
            scored = [m for m in members if m.scored]
            elements = torch.cat(
                [scores[m.name].detach().double()[m.index].flatten() for m in scored]
            )
            alive.append(any(bool(current[m.name][m.index].any()) for m in scored if m.masked))
            g = reduce_groups(elements.reshape(1, -1), reduction)[0]
            if granularity == "layer":  # blocks differ in size: compare per element
                g = g / per_element(reduction, elements.numel())
            group_scores.append(g)
        # The part's groups are the elements of one tensor of group scores: the one
        # selection path prunes them, pruned groups staying pruned (the prior).
        part_sparsity = sparsity
        if granularity == "channel":  # every space keeps a channel
            part_sparsity = min(sparsity, (len(part) - 1) / len(part))
        keep = selection.select(
            {"groups": torch.stack(group_scores)},
            part_sparsity,
            pattern=UNSTRUCTURED,
            budget="uniform",
            priors={"groups": torch.tensor(alive)},
        )["groups"]
        for members, kept in zip(part, keep.tolist(), strict=True):
            if not kept:
                for m in members:
                    if m.masked:
                        new_masks[m.name][m.index] = False
    for n, keep in new_masks.items():
        masks.attach(model, n, keep, dense_grad=dense_grad)
    return new_masks


def uncoupled_channels(model: nn.Module) -> dict[str, int]:
    """Coupled spaces whose writers were pruned on different channels: ``{space: n}``, the
    ``n`` channels pruned in some writers but not all, which :func:`shrink` must keep.

    Empty when no space has several writers or the model's structure cannot be found
    (an untraceable model; :func:`shrink` says why when it is called).
    """
    try:
        found = structure(model)
    except Exception:  # any reason the structure is unknown: nothing to say here
        return {}
    split = {}
    for s in found.spaces:
        if s.fixed or len(s.writers) < 2:
            continue
        pruned = torch.stack([_rows_zero(model.get_submodule(w)) for w in s.writers])
        n = int((pruned.any(0) & ~pruned.all(0)).sum())
        if n:
            split[s.name] = n
    return split


def _keep_of(model: nn.Module, name: str) -> torch.Tensor:
    mask = masks.get_mask(model, name)
    if mask is not None:
        return mask.detach().bool().clone()
    return torch.ones_like(masks.weight(model, name), dtype=torch.bool)


class _Member(NamedTuple):
    """Part of a coupled group: the elements ``index`` of tensor ``name``.

    ``scored``: whether its scores count in the group's score (by default a channel is
    scored on the rows that write it; the columns that read it go with it).  ``masked``:
    whether pruning the group masks it (a BatchNorm scale only scores).
    """

    name: str
    index: Any
    scored: bool = True
    masked: bool = True


#: Which elements score a coupled channel (see :func:`prune_coupled`).
GROUP_MEMBERS = ("writers", "all")


def _coupled_groups(
    model: nn.Module, found: Structure, granularity: str, group_members: str = "writers"
) -> list[list[list]]:
    """Parts (one ranking each), each a list of groups, each a list of :class:`_Member`."""
    if granularity == "channel":
        every = group_members == "all"
        parts = []
        for s in found.spaces:
            if s.fixed or not s.writers:
                continue
            groups = []
            for c in range(_space_size(model, s)):
                members = [_Member(f"{w}.weight", c) for w in s.writers]
                for r, k in s.readers:
                    start = s.offsets.get(r, 0) + c * k
                    columns = (slice(None), slice(start, start + k))
                    members.append(_Member(f"{r}.weight", columns, scored=every))
                if every:  # the scales of each affine BatchNorm of the space
                    for n in s.norms:
                        if getattr(model.get_submodule(n), "weight", None) is not None:
                            at = s.offsets.get(n, 0) + c
                            members.append(_Member(f"{n}.weight", at, masked=False))
                groups.append(members)
            parts.append(groups)
        return parts
    if granularity == "head":
        heads = []
        for h in found.heads:
            n, d = _head_slices(model.get_submodule(h.path))
            for i in range(n):
                rows = slice(i * d, (i + 1) * d)
                members = [_Member(f"{h.path}.{p}.weight", rows) for p in "qkv"]
                members.append(_Member(f"{h.path}.out.weight", (slice(None), rows)))
                heads.append(members)
        return [heads] if heads else []
    if granularity == "layer":
        blocks: dict[str, list[_Member]] = {}
        for b in found.branches:
            for layer in _branch_layers(found, b):
                blocks.setdefault(b.path, []).append(_Member(f"{layer}.weight", slice(None)))
        return [list(blocks.values())] if blocks else []
    raise ValueError(f"granularity must be 'channel', 'head' or 'layer', got {granularity!r}")
