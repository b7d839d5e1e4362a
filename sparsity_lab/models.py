"""Small models that train on a laptop CPU in seconds to minutes.

Every model takes ``input_shape`` (the shape of ONE example) and ``n_classes``, keeps
``input_shape`` as an attribute (so ``torch.zeros(1, *model.input_shape)`` is a valid input,
of dtype ``long`` for the transformer), and returns logits of shape ``(batch, n_classes)``.
Layers have stable, readable names (``fc1``, ``conv1``, ``blocks.0.attn.q``) because
pruning code addresses tensors by name.  Initialisation uses the global torch RNG, so
``torch.manual_seed`` makes a model reproducible.

>>> model = build("lenet300", input_shape=(784,), n_classes=10)

Names: ``lenet300``, ``lenet5``, ``cnn1d``, ``resmlp``, ``resnet_small``,
``tiny_transformer`` (:func:`available` lists them).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pooling import MaxPool2x2
from .registry import did_you_mean

__all__ = [
    "build",
    "available",
    "LeNet300",
    "LeNet5",
    "CNN1d",
    "ResMLP",
    "ResidualMLPBlock",
    "ResNetSmall",
    "BasicBlock",
    "TinyTransformer",
    "TransformerBlock",
    "MultiHeadSelfAttention",
    "attention",
    "attention_weights",
]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _check_shape(name: str, input_shape: tuple[int, ...], ndim: int, layout: str, hint: str):
    if len(input_shape) != ndim:
        raise ValueError(f"{name} expects input_shape {layout}, got {input_shape}; {hint}")


@torch.no_grad()
def _flat_size(
    features: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...]
) -> int:
    """Number of features ``features`` produces for one example: a dry run is simpler and
    safer than redoing the convolution arithmetic by hand."""
    return features(torch.zeros(1, *input_shape)).numel()


# --------------------------------------------------------------------------------------
# Multilayer perceptrons


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al., 1998): ``in -> 300 -> 100 -> n_classes`` with ReLU.

    The classic subject of pruning papers (Han et al., 2015).  It flattens its input, so
    any ``input_shape`` works.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        hidden: tuple[int, int] = (300, 100),
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.fc1 = nn.Linear(_numel(self.input_shape), hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ResidualMLPBlock(nn.Module):
    """``relu(x + fc2(relu(fc1(x))))``: the skip keeps a path open when a layer is pruned."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.fc2(F.relu(self.fc1(x))))


class ResMLP(nn.Module):
    """A residual MLP for MNIST-1D or any flat input: Linear stem, ``depth`` residual
    blocks of ``width`` units, Linear head.  It flattens its input."""

    def __init__(
        self, input_shape: tuple[int, ...], n_classes: int, width: int = 64, depth: int = 2
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.stem = nn.Linear(_numel(self.input_shape), width)
        self.blocks = nn.Sequential(*(ResidualMLPBlock(width) for _ in range(depth)))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x.flatten(1)))
        return self.head(self.blocks(x))


# --------------------------------------------------------------------------------------
# Convolutional networks


class LeNet5(nn.Module):
    """LeNet-5 style CNN for ``(C, H, W)`` images: conv 6@5x5 (pad 2), max-pool, conv
    16@5x5, max-pool, then fully connected 120 -> 84 -> ``n_classes`` with ReLU.

    On small images (8x8 digits) the second convolution is padded too, so the feature map
    never shrinks to nothing; the size of the first dense layer comes from a dry run.
    """

    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        _check_shape("lenet5", self.input_shape, 3, "(C, H, W)", "load images with flatten=False")
        channels, height, width = self.input_shape
        # after conv1 (same size) and a 2x2 pool the side is ceil(side / 2); an unpadded 5x5
        # convolution then needs at least 5 pixels, and leaving >= 2 keeps the pool useful
        conv2_pad = 0 if math.ceil(min(height, width) / 2) >= 6 else 2
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=conv2_pad)
        # ceil_mode: a 1-pixel map stays 1 pixel; torch's 2x2 max-pool, exactly, but faster
        self.pool = MaxPool2x2(ceil_mode=True)
        self.fc1 = nn.Linear(_flat_size(self._features, self.input_shape), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, n_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self._features(x)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CNN1d(nn.Module):
    """The CNN for MNIST-1D (after Greydanus, 2020): three strided Conv1d + ReLU layers,
    flatten, Linear.

    Takes ``(C, L)`` signals, e.g. ``(1, 40)``; a flat ``(L,)`` shape is read as one channel.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        channels: tuple[int, ...] = (32, 32, 32),
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        if len(self.input_shape) not in (1, 2):
            raise ValueError(f"cnn1d expects input_shape (C, L) or (L,), got {self.input_shape}")
        in_channels = self.input_shape[0] if len(self.input_shape) == 2 else 1
        layers: list[nn.Module] = []
        for i, out_channels in enumerate(channels):
            kernel = 5 if i == 0 else 3  # a wider first kernel sees a whole stroke
            layers += [
                nn.Conv1d(in_channels, out_channels, kernel, stride=2, padding=kernel // 2),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(_flat_size(self._conv_features, self.input_shape), n_classes)

    def _conv_features(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.input_shape[0] if len(self.input_shape) == 2 else 1
        return self.features(x.reshape(x.shape[0], channels, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._conv_features(x))


class BasicBlock(nn.Module):
    """The ResNet basic block (He et al., 2016): ``relu(bn2(conv2(relu(bn1(conv1(x))))) +
    shortcut(x))``.

    The shortcut is the identity when shapes match, otherwise a 1x1 convolution with
    BatchNorm (a projection) that matches channels and stride.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # no conv bias: the BatchNorm that follows has its own shift
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small ResNet with BatchNorm for ``(C, H, W)`` images (about 20k parameters).

    Stem conv-bn-relu, one stage of ``blocks_per_stage`` :class:`BasicBlock` per width in
    ``widths`` (every stage after the first halves the resolution), global average pool,
    Linear.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        widths: tuple[int, ...] = (8, 16, 32),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        _check_shape(
            "resnet_small", self.input_shape, 3, "(C, H, W)", "load images with flatten=False"
        )
        self.stem = nn.Sequential(
            nn.Conv2d(self.input_shape[0], widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        stages = []
        in_channels = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(in_channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))  # global average pool


# --------------------------------------------------------------------------------------
# Tiny transformer


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention weights ``softmax(q k^T / sqrt(d))``.

    ``q``: ``(..., L_q, d)``, ``k``: ``(..., L_k, d)``; ``key_padding_mask``: ``(B, L_k)``
    bool, True where a key is padding (the ``nn.MultiheadAttention`` convention), for
    ``q``/``k`` of shape ``(B, H, L, d)``.  ``causal``: query ``i`` sees keys ``j <= i``
    only (a decoder's mask).  Returns ``(..., L_q, L_k)``; each row sums to 1.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    # the most negative finite number, not -inf: its exp is exactly 0, and a row whose keys
    # are all blocked gets uniform weights instead of NaN
    lowest = torch.finfo(scores.dtype).min
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], lowest)
    if causal:
        later = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(later, lowest)
    return scores.softmax(dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention written out: ``softmax(q k^T / sqrt(d)) v``.

    Shapes as in :func:`attention_weights`; ``v`` is ``(..., L_k, d_v)``.  Equal to
    ``F.scaled_dot_product_attention`` with ``attn_mask=~key_padding_mask`` (and
    ``is_causal=causal``).
    """
    return attention_weights(q, k, key_padding_mask, causal) @ v


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with explicit ``q``, ``k``, ``v`` and ``out`` projections.

    Head ``h`` owns rows ``h*d : (h+1)*d`` of ``q``, ``k``, ``v`` and the same columns of
    ``out`` (``d = dim // n_heads``), so pruning a head means zeroing or removing those.
    The head size is read from ``q.out_features`` at every call, so a shrunk layer works.
    ``causal``: each position attends to itself and the positions before it only.
    """

    def __init__(self, dim: int, n_heads: int, causal: bool = False) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim must be divisible by n_heads, got dim={dim}, n_heads={n_heads}")
        self.n_heads = n_heads
        self.causal = causal
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, inner = x.shape  # (B, L, H*d) -> (B, H, L, d)
        return x.view(batch, length, self.n_heads, inner // self.n_heads).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        heads = attention(q, k, v, key_padding_mask, self.causal)  # (B, H, L, d_v)
        merged = heads.transpose(1, 2).flatten(2)  # (B, L, H*d_v)
        return self.out(merged)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm encoder block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``, where
    the MLP is ``fc2(gelu(fc1(.)))`` with ``mlp_ratio * dim`` hidden units (a decoder block
    with ``causal=True``)."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4, causal: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, n_heads, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), key_padding_mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A tiny transformer classifier for token ids of shape ``(B, seq_len)``.

    Token embedding (``padding_idx=0``) plus learned position embedding, ``depth``
    :class:`TransformerBlock`, final LayerNorm, pooling, Linear head.  Pad tokens (id 0) are
    masked out as keys and never pooled, so the output does not depend on them.

    ``pool="mean"`` averages the non-pad positions: right for a label about the whole
    sequence (sentiment).  ``pool="last"`` takes the last non-pad position: right for a
    label about what comes next (the ``chars`` task), since the newest token matters most
    there and a mean would blur it with the rest.  An all-pad row pools to zeros (mean) or
    to position 0 (last).

    ``causal=True, pool="none"`` makes it a decoder-only language model: each position
    sees only itself and what precedes it, and the output is every position's scores,
    ``(B, n_classes, L)`` with the classes on dim 1 as ``nn.CrossEntropyLoss`` expects, so
    that position ``t`` predicts token ``t + 1`` (the ``char_lm`` data's labels).
    """

    pad_id = 0
    pools = ("mean", "last", "none")

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        vocab_size: int = 64,
        dim: int = 32,
        depth: int = 2,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        pool: str = "mean",
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        _check_shape(
            "tiny_transformer", self.input_shape, 1, "(seq_len,)", "pass token ids, not features"
        )
        if pool not in self.pools:
            hint = did_you_mean(pool, list(self.pools)) if isinstance(pool, str) else ""
            raise ValueError(
                f"unknown pool {pool!r}.{hint} Choose 'mean' (average of the non-pad "
                "positions), 'last' (the last non-pad position) or 'none' (every position, "
                "for a language model with causal=True)"
            )
        self.pool, self.causal = pool, causal
        self.tok_emb = nn.Embedding(vocab_size, dim, padding_idx=self.pad_id)
        self.pos_emb = nn.Embedding(self.input_shape[0], dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads, mlp_ratio, causal) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        pad = tokens == self.pad_id  # (B, L), True at padding
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x, key_padding_mask=pad)
        x = self.ln_f(x)
        if self.pool == "none":
            return self.head(x).transpose(1, 2)  # (B, n_classes, L)
        if self.pool == "last":
            # the largest non-pad position; an all-pad row (-1) falls back to position 0
            last = positions.masked_fill(pad, -1).amax(dim=1).clamp(min=0)
            pooled = x[torch.arange(len(x), device=x.device), last]
        else:
            keep = (~pad).unsqueeze(-1).to(x.dtype)
            # clamp: an all-pad row averages nothing instead of dividing by zero
            pooled = (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        return self.head(pooled)


# --------------------------------------------------------------------------------------
# Public entry points

_MODELS: dict[str, type[nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "cnn1d": CNN1d,
    "resmlp": ResMLP,
    "resnet_small": ResNetSmall,
    "tiny_transformer": TinyTransformer,
}


def available() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(_MODELS)


def build(name: str, *, input_shape: tuple[int, ...], n_classes: int, **options) -> nn.Module:
    """Model ``name`` for examples of shape ``input_shape``; ``options`` go to its class.

    ``lenet300``: ``hidden=(300, 100)``; ``lenet5``: none; ``cnn1d``:
    ``channels=(32, 32, 32)``; ``resmlp``: ``width=64, depth=2``; ``resnet_small``:
    ``widths=(8, 16, 32), blocks_per_stage=1``; ``tiny_transformer``: ``vocab_size=64,
    dim=32, depth=2, n_heads=4, mlp_ratio=4, pool="mean", causal=False`` (``"last"`` for
    next-token labels; ``pool="none", causal=True`` for a language model).
    """
    cls = _MODELS.get(name)
    if cls is None:
        hint = did_you_mean(name, available())
        raise KeyError(f"unknown model {name!r}.{hint} Available: {', '.join(available())}")
    fixed = ("input_shape", "n_classes")
    accepted = [p for p in inspect.signature(cls).parameters if p not in fixed]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"model {name!r} has no option {', '.join(unknown)}; "
            f"its options are {', '.join(accepted) or 'none'}"
        )
    return cls(input_shape=tuple(input_shape), n_classes=n_classes, **options)
