"""Sparse gradient exchange for data-parallel training, as DDP communication hooks.

In data-parallel training every worker computes a gradient on its own batch and the
workers average them, normally with a dense all-reduce of every entry.  Most entries are
tiny, so each worker can send only a few of them, as (index, value) pairs, and keep the
rest: *gradient sparsification* (survey sections 2.3, 5 and 6).  What it does not send is
not lost when **error feedback** is on: the unsent part, the *residual*, is added to the
next step's gradient, so every entry is eventually sent once it has grown large enough.

Each method here is a :class:`Compressor`, the state of a
``torch.nn.parallel.DistributedDataParallel`` communication hook::

    ddp = DistributedDataParallel(model)
    compressor = register_hook(ddp, "topk", sparsity=0.99)      # error feedback on
    ...train...
    compressor.bytes_sent, compressor.dense_bytes                # measured, per worker

==================  ============================  ==========================================
name                paper                         what a worker sends from ``a = g + r``
==================  ============================  ==========================================
topk                (baseline, e.g. Stich 2018)   the ``k`` entries of largest ``|a|``
randomk             (baseline, Stich 2018)        ``k`` random entries, scaled ``n / k``
threshold           Strom 2015                    ``tau * sign(a)`` where ``|a| >= tau``
gradient_dropping   Aji & Heafield 2017           ``|a| >=`` threshold estimated on a sample
dgc                 Lin 2018                      top-k of accumulated *momentum*, masked
adacomp             Chen 2018                     per bin, ``|a + g| >= max |a|`` of the bin
==================  ============================  ==========================================

**What is counted.**  ``bytes_sent`` is the sum of the sizes (``numel * element_size``) of
the tensors this worker passes as input to ``torch.distributed`` collectives: indices
(int32), values, and the per-worker counts when the number of entries varies.
``dense_bytes`` is the size of the dense buckets a plain all-reduce would pass.  With two
workers, ring all-reduce and ring all-gather put exactly these amounts on the wire; with
``p`` workers all-gather sends ``p - 1`` times its input and all-reduce ``2 (p - 1) / p``.

**How the exchange works.**  Workers pick different indices, so they cannot simply add
their sparse vectors with an all-reduce: each gathers every worker's (indices, values)
with ``all_gather``, adds them into a dense zero vector and divides by the number of
workers.  When the number of entries differs between workers, the counts are gathered
first and every payload is padded to the largest (padding writes 0 at index 0, which adds
nothing; its bytes are counted).  ``randomk`` draws the *same* indices on every worker
from a shared seed, so it all-reduces the values alone and sends no indices.

DDP hands the hook one *bucket* at a time (a flat buffer holding the gradients of several
parameters; DDP may regroup parameters into new buckets after the first step), so
selection happens per bucket.  Residuals and DGC's momentum are stored per parameter,
which keeps them right when the buckets change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from ..patterns import check_sparsity
from ..registry import get as registry_get
from ..registry import register

__all__ = [
    "Payload",
    "Compressor",
    "DenseAllReduce",
    "TopK",
    "RandomK",
    "Threshold",
    "GradientDropping",
    "DGC",
    "AdaComp",
    "dgc_warmup_sparsity",
    "comm_hook",
    "make_compressor",
    "register_hook",
    "METHODS",
]

#: Registered names of the gradient compressors.
METHODS = ("topk", "randomk", "threshold", "gradient_dropping", "dgc", "adacomp")

# Indices go as int32: half the bytes of int64, enough for any bucket below 2**31 entries.
_INDEX_DTYPE = torch.int32


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _keep_count(density: float, n: int) -> int:
    """Entries kept out of ``n`` at ``density``: ``floor(density * n)``, at least one.

    Rounding down means the sparsity reached is never below the one asked for.
    """
    return max(1, min(n, int(math.floor(density * n + 1e-9))))


@dataclass
class Payload:
    """What one worker contributes for a bucket: ``values`` to add at ``indices``."""

    indices: torch.Tensor  # int64 positions in the flat bucket
    values: torch.Tensor  # float values, before averaging over the workers


class Compressor:
    """Base class: the state of a DDP communication hook that sparsifies each bucket.

    A subclass implements :meth:`select` (which entries of the accumulated gradient this
    worker sends) and may override :meth:`accumulate` (what is selected from) and
    :meth:`remember` (what is kept for the next step).  With ``error_feedback`` the unsent
    part of ``a = g + r`` is the next residual ``r``; without it, it is dropped.

    Counters (per worker, since the hook was registered): ``bytes_sent`` (measured, see the
    module docstring), ``dense_bytes`` (a dense all-reduce's input), ``elements_sent`` and
    ``elements`` (entries selected / entries in the buckets), ``steps`` (backward passes).
    """

    name: ClassVar[str] = "compressor"
    #: Every worker selects the same indices (no indices need to be sent).
    shared_indices: ClassVar[bool] = False
    #: Every worker sends the same number of entries (no counts need to be exchanged).
    fixed_count: ClassVar[bool] = True

    def __init__(self, *, error_feedback: bool = True, seed: int = 0) -> None:
        if not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be True or False, got {error_feedback!r}")
        self.error_feedback = error_feedback
        self.seed = int(seed)
        self._state: dict[str, dict[torch.Tensor, torch.Tensor]] = {}
        self._stand_ins: dict[int, torch.Tensor] = {}
        # One random stream per compressor: every worker calls it in the same order (DDP
        # gives every worker the same buckets in the same order), so the streams agree.
        self._gen = torch.Generator().manual_seed(self.seed)
        self.reset_counters()

    # ------------------------------------------------------------------ per-parameter state

    def reset_counters(self) -> None:
        """Zero the byte and element counters (the residuals are kept)."""
        self.bytes_sent = 0
        self.dense_bytes = 0
        self.elements_sent = 0
        self.elements = 0
        self.steps = 0

    def _flat_state(self, key: str, params: Sequence[torch.Tensor], like: torch.Tensor):
        """The per-parameter state ``key`` of ``params``, laid out like their bucket."""
        store = self._state.setdefault(key, {})
        parts = [store.get(p, torch.zeros(p.numel(), dtype=like.dtype)) for p in params]
        flat = torch.cat(parts) if parts else like.new_zeros(0)
        if flat.numel() != like.numel():
            raise RuntimeError(
                f"bucket of {like.numel()} entries does not match its parameters "
                f"({flat.numel()} entries); sparse hooks need dense CPU gradients"
            )
        return flat

    def _store_state(self, key: str, params: Sequence[torch.Tensor], flat: torch.Tensor):
        store = self._state.setdefault(key, {})
        offset = 0
        for p in params:
            store[p] = flat[offset : offset + p.numel()].clone()
            offset += p.numel()

    def state(self, key: str, param: torch.Tensor | None = None, bucket: int = 0):
        """Per-parameter state ``key`` (``"residual"``, DGC's ``"momentum"``) of ``param``.

        Without ``param``: the state of the stand-in used by :meth:`compress` for ``bucket``.
        Zeros before the first step.
        """
        if param is None:
            param = self._stand_ins.get(bucket)
            if param is None:
                raise KeyError(f"no compress() call has used bucket {bucket} yet")
        found = self._state.get(key, {}).get(param)
        return torch.zeros_like(param) if found is None else found.reshape(param.shape)

    def residual(self, param: torch.Tensor | None = None, bucket: int = 0) -> torch.Tensor:
        """The error-feedback residual of ``param`` (see :meth:`state`)."""
        return self.state("residual", param, bucket)

    # ------------------------------------------------------------------ the algorithm

    @property
    def density(self) -> float:
        """Fraction of entries a worker sends at the current step (for fixed-k methods)."""
        return 1.0

    def accumulate(self, grad: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The vector entries are selected from: ``g + r`` with error feedback, else ``g``."""
        if not self.error_feedback:
            return grad.clone()
        return grad + self._flat_state("residual", params, grad)

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        """The entries of ``acc`` to send for bucket number ``bucket``."""
        raise NotImplementedError

    def remember(self, acc: torch.Tensor, payload: Payload, params: Sequence[torch.Tensor]):
        """Keep ``acc`` minus what was sent as the residual (when error feedback is on)."""
        if self.error_feedback:
            rest = acc.clone()
            rest.index_add_(0, payload.indices, -payload.values)
            self._store_state("residual", params, rest)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """The tensor actually sent for ``values`` (``values`` itself by default)."""
        return values

    def decode(self, sent: torch.Tensor) -> torch.Tensor:
        """Values back from what :meth:`encode` sent."""
        return sent

    def compress(
        self, grad: torch.Tensor, params: Sequence[torch.Tensor] | None = None, bucket: int = 0
    ) -> Payload:
        """Local part of one step, without communication: accumulate, select, remember.

        ``params`` are the tensors whose state (residual, momentum) the entries of ``grad``
        belong to, in order; by default one stand-in per ``bucket`` number, so repeated
        calls with the same ``bucket`` carry the residual over.  The hook calls this too.
        """
        if params is None:
            stand_in = self._stand_ins.get(bucket)
            if stand_in is None or stand_in.numel() != grad.numel():
                stand_in = self._stand_ins[bucket] = torch.empty(grad.numel())
            params = [stand_in]
        acc = self.accumulate(grad, params)
        payload = self.select(acc, bucket)
        self.remember(acc, payload, params)
        return payload

    # ------------------------------------------------------------------ communication

    def _all_gather(self, tensor: torch.Tensor, group) -> list[torch.Tensor]:
        self.bytes_sent += _nbytes(tensor)
        world = dist.get_world_size(group)
        out = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(out, tensor, group=group)
        return out

    def _all_reduce(self, tensor: torch.Tensor, group) -> None:
        self.bytes_sent += _nbytes(tensor)
        dist.all_reduce(tensor, group=group)

    def exchange(self, payload: Payload, numel: int, dtype: torch.dtype, group=None):
        """Sum every worker's payload into a dense vector of ``numel`` entries."""
        total = torch.zeros(numel, dtype=dtype)
        if self.shared_indices:
            values = payload.values.to(dtype).clone()
            self._all_reduce(values, group)
            total[payload.indices] = values
            return total
        indices = payload.indices.to(_INDEX_DTYPE)
        values = self.encode(payload.values)
        if not self.fixed_count:
            count = torch.tensor([indices.numel()], dtype=_INDEX_DTYPE)
            largest = max(1, int(torch.cat(self._all_gather(count, group)).max()))
            pad = largest - indices.numel()
            indices = torch.cat([indices, indices.new_zeros(pad)])
            values = torch.cat([values, values.new_zeros(pad)])
        gathered = zip(
            self._all_gather(indices, group), self._all_gather(values, group), strict=True
        )
        for idx, sent in gathered:
            total.index_add_(0, idx.long(), self.decode(sent).to(dtype))
        return total

    def communicate(self, bucket: dist.GradBucket, group=None) -> torch.Tensor:
        """The averaged sparse gradient of ``bucket`` (what the hook's future returns)."""
        grad = bucket.buffer()
        params = bucket.parameters()
        world = dist.get_world_size(group)
        self.dense_bytes += _nbytes(grad)
        self.elements += grad.numel()
        payload = self.compress(grad, params, bucket.index())
        self.elements_sent += payload.indices.numel()
        total = self.exchange(payload, grad.numel(), grad.dtype, group)
        if bucket.is_last():
            self.steps += 1
        return total.div_(world)

    def stats(self) -> dict[str, float]:
        """Counters and ratios: bytes_sent, dense_bytes, byte_ratio (dense / sent), density."""
        return {
            "steps": self.steps,
            "bytes_sent": self.bytes_sent,
            "dense_bytes": self.dense_bytes,
            "byte_ratio": self.dense_bytes / self.bytes_sent if self.bytes_sent else math.nan,
            "density": self.elements_sent / self.elements if self.elements else math.nan,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(error_feedback={self.error_feedback})"


def comm_hook(state: Compressor, bucket: dist.GradBucket) -> torch.futures.Future:
    """The DDP communication hook: ``ddp.register_comm_hook(compressor, comm_hook)``.

    The exchange runs synchronously inside the hook and the returned future is already
    complete: simpler to read than chained asynchronous work, at the price of no overlap
    of communication with the rest of the backward pass.
    """
    future: torch.futures.Future = torch.futures.Future()
    future.set_result(state.communicate(bucket))
    return future


# DDP checks the hook's annotations against the real classes; with postponed evaluation of
# annotations they would be strings, so they are set explicitly.
comm_hook.__annotations__ = {
    "state": Compressor,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


class DenseAllReduce(Compressor):
    """The uncompressed baseline: a dense all-reduce of every bucket, bytes counted."""

    name = "dense"

    def communicate(self, bucket: dist.GradBucket, group=None) -> torch.Tensor:
        grad = bucket.buffer().clone()
        self.dense_bytes += _nbytes(grad)
        self.elements += grad.numel()
        self.elements_sent += grad.numel()
        self._all_reduce(grad, group)
        if bucket.is_last():
            self.steps += 1
        return grad.div_(dist.get_world_size(group))


class _FixedDensity(Compressor):
    """A compressor that keeps a fixed fraction ``1 - sparsity`` of every bucket."""

    def __init__(self, sparsity: float = 0.99, *, error_feedback: bool = True, seed: int = 0):
        check_sparsity(sparsity)
        super().__init__(error_feedback=error_feedback, seed=seed)
        self.sparsity = float(sparsity)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sparsity={self.sparsity}, error_feedback={self.error_feedback})"
        )


@register("ephemeral", "topk", section="5")
class TopK(_FixedDensity):
    """Top-k gradient sparsification with switchable error feedback (as in Stich 2018).

    Rule: ``a = g + r``; send the ``k = floor((1 - sparsity) n)`` entries of largest
    ``|a|`` of each bucket; ``r <- a - top_k(a)`` with error feedback, else ``r = 0``.
    Averaged update: ``(1/p) sum_workers top_k(a_w)``.  Unstructured, per DDP bucket.
    """

    name = "topk"

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        k = _keep_count(self.density, acc.numel())
        indices = acc.abs().topk(k, sorted=False).indices
        return Payload(indices, acc[indices])


@register("ephemeral", "randomk", section="5")
class RandomK(_FixedDensity):
    """Random-k sparsification, unbiased by scaling (Stich 2018; Wangni 2018).

    Rule: ``k = floor((1 - sparsity) n)`` indices drawn uniformly without replacement,
    the same on every worker (one generator seeded by ``seed``, drawn in bucket order);
    send ``(n / k) a_i`` when ``unbiased``, else ``a_i``.  Each index is drawn with
    probability ``k / n``, so ``E[sent] = a``.  ``unbiased`` defaults to ``not
    error_feedback``: with error feedback the unscaled values are the usual choice, since
    the residual already corrects the bias.  Shared indices: only values are all-reduced.
    """

    name = "randomk"
    shared_indices = True

    def __init__(
        self,
        sparsity: float = 0.99,
        *,
        error_feedback: bool = True,
        unbiased: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(sparsity, error_feedback=error_feedback, seed=seed)
        self.unbiased = (not error_feedback) if unbiased is None else bool(unbiased)

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        n = acc.numel()
        k = _keep_count(self.density, n)
        # the same stream on every worker: no indices need to be exchanged
        indices = torch.randperm(n, generator=self._gen)[:k]
        scale = n / k if self.unbiased else 1.0
        return Payload(indices, acc[indices] * scale)


@register("ephemeral", "threshold", section="5")
class Threshold(Compressor):
    """Threshold quantisation with residuals (Strom 2015).

    Rule: ``a = g + r``; every entry with ``|a_i| >= tau`` is sent as ``tau * sign(a_i)``
    (one sign byte plus its index; the receiver multiplies by ``tau``) and
    ``r <- a - sent``.  The number of entries sent adapts to the gradient.  With
    ``quantize=False`` the exact values are sent instead.  Unstructured, per bucket.
    """

    name = "threshold"
    fixed_count = False

    def __init__(
        self,
        threshold: float = 1e-3,
        *,
        error_feedback: bool = True,
        quantize: bool = True,
        seed: int = 0,
    ) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold!r}")
        super().__init__(error_feedback=error_feedback, seed=seed)
        self.threshold = float(threshold)
        self.quantize = quantize

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        indices = torch.nonzero(acc.abs() >= self.threshold).flatten()
        picked = acc[indices]
        values = self.threshold * picked.sign() if self.quantize else picked
        return Payload(indices, values)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return values.sign().to(torch.int8) if self.quantize else values

    def decode(self, sent: torch.Tensor) -> torch.Tensor:
        return sent.float() * self.threshold if self.quantize else sent

    def __repr__(self) -> str:
        return f"Threshold(threshold={self.threshold}, error_feedback={self.error_feedback})"


@register("ephemeral", "gradient_dropping", section="5")
class GradientDropping(_FixedDensity):
    """Gradient dropping (Aji & Heafield 2017): drop the smallest entries by a sampled threshold.

    Rule: ``a = g + r``; draw ``max(min_sample, sample_fraction * n)`` entries of ``|a|``
    at random, take as threshold ``t`` their ``sparsity``-quantile, send every entry with
    ``|a_i| >= t``; ``r <- a - sent``.  The sample makes the threshold cheap (no sort of
    the whole gradient) and the count approximate.  Unstructured, per bucket.
    """

    name = "gradient_dropping"
    fixed_count = False

    def __init__(
        self,
        sparsity: float = 0.99,
        *,
        error_feedback: bool = True,
        sample_fraction: float = 0.001,
        min_sample: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(sparsity, error_feedback=error_feedback, seed=seed)
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction!r}")
        self.sample_fraction = sample_fraction
        self.min_sample = int(min_sample)

    def threshold(self, acc: torch.Tensor) -> float:
        """The ``sparsity``-quantile of ``|acc|`` on a random sample."""
        n = acc.numel()
        size = min(n, max(self.min_sample, math.ceil(self.sample_fraction * n)))
        sample = acc.abs()[torch.randint(n, (size,), generator=self._gen)]
        kept = _keep_count(self.density, size)
        return float(sample.topk(kept).values[-1])

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        indices = torch.nonzero(acc.abs() >= self.threshold(acc)).flatten()
        return Payload(indices, acc[indices])


def dgc_warmup_sparsity(step: int, final_sparsity: float, warmup_steps: int) -> float:
    """DGC's exponential sparsity warm-up (Lin 2018): 75%, 93.75%, 98.4375%, 99.6%, then final.

    The warm-up is split into four equal stages; stage ``s`` keeps density ``0.25**(s+1)``
    (never below the final density); from ``warmup_steps`` on the final sparsity holds.
    """
    check_sparsity(final_sparsity)
    if warmup_steps <= 0 or step >= warmup_steps:
        return final_sparsity
    stage = 4 * step // warmup_steps
    return min(final_sparsity, 1.0 - 0.25 ** (stage + 1))


@register("ephemeral", "dgc", section="5")
class DGC(_FixedDensity):
    """Deep gradient compression (Lin 2018): top-k of accumulated momentum, with four fixes.

    Rule, per worker, with local gradient ``g``::

        g <- g * min(1, (clip_norm / sqrt(p)) / ||g||)    local gradient clipping
        u <- m u + g                                       momentum correction
        v <- v + u                                         accumulation (error feedback)
        send v_i for the top-k |v_i|; then v_i <- 0 and u_i <- 0 there
                                                           (momentum factor masking)

    with the sparsity warmed up by :func:`dgc_warmup_sparsity` over ``warmup_steps``.  The
    momentum lives here, so train with plain SGD (``momentum=0``) on the averaged update.
    Without error feedback ``v`` is reset to ``u`` every step.  Selection is an exact top-k
    per bucket (the paper estimates the threshold on a sample); clipping uses the norm of
    the bucket (of the whole gradient when the model fits in one bucket).
    """

    name = "dgc"

    def __init__(
        self,
        sparsity: float = 0.999,
        *,
        momentum: float = 0.9,
        clip_norm: float | None = None,
        warmup_steps: int = 0,
        error_feedback: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(sparsity, error_feedback=error_feedback, seed=seed)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
        self.momentum = momentum
        self.clip_norm = clip_norm
        self.warmup_steps = int(warmup_steps)

    @property
    def density(self) -> float:
        return 1.0 - dgc_warmup_sparsity(self.steps, self.sparsity, self.warmup_steps)

    def accumulate(self, grad: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """``v + (m u + clip(g))``; ``u`` is kept for :meth:`remember`."""
        g = grad.clone()
        if self.clip_norm is not None:
            world = dist.get_world_size() if dist.is_initialized() else 1
            limit = self.clip_norm / math.sqrt(world)
            norm = float(g.norm())
            if norm > limit:
                g.mul_(limit / norm)
        self._u = self.momentum * self._flat_state("momentum", params, grad) + g
        if not self.error_feedback:
            return self._u.clone()
        return self._flat_state("residual", params, grad) + self._u

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        k = _keep_count(self.density, acc.numel())
        indices = acc.abs().topk(k, sorted=False).indices
        return Payload(indices, acc[indices])

    def remember(self, acc: torch.Tensor, payload: Payload, params: Sequence[torch.Tensor]):
        """Zero the sent entries of both the accumulation ``v`` and the momentum ``u``."""
        u = self._u
        u[payload.indices] = 0.0  # momentum factor masking
        self._store_state("momentum", params, u)
        super().remember(acc, payload, params)


@register("ephemeral", "adacomp", section="5")
class AdaComp(Compressor):
    """Adaptive residual gradient compression (Chen 2018): local selection in bins.

    Rule: ``a = g + r``; ``h = a + g`` (the latest gradient counted twice, which favours
    entries that are still growing); split ``a`` into bins of ``bin_size`` entries; in each
    bin send every entry with ``|h_i| >= max_bin |a|``; ``r <- a - sent``.  The number sent
    adapts to the gradient; no sort, no global threshold.  Values are sent exactly (the
    paper also ternarises them).  Unstructured, per bucket.
    """

    name = "adacomp"
    fixed_count = False

    def __init__(self, bin_size: int = 500, *, error_feedback: bool = True, seed: int = 0):
        if isinstance(bin_size, bool) or not isinstance(bin_size, int) or bin_size < 1:
            raise ValueError(f"bin_size must be a positive integer, got {bin_size!r}")
        super().__init__(error_feedback=error_feedback, seed=seed)
        self.bin_size = bin_size

    def accumulate(self, grad: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """``g + r`` (error feedback) or ``g``; the latest ``g`` is kept for :meth:`select`."""
        self._grad = grad
        return super().accumulate(grad, params)

    def select(self, acc: torch.Tensor, bucket: int) -> Payload:
        n = acc.numel()
        pad = (-n) % self.bin_size
        bins = torch.cat([acc.abs(), acc.new_zeros(pad)]).reshape(-1, self.bin_size)
        gmax = bins.max(dim=1).values.repeat_interleave(self.bin_size)[:n]
        h = acc + self._grad
        indices = torch.nonzero((h.abs() >= gmax) & (gmax > 0)).flatten()
        return Payload(indices, acc[indices])

    def __repr__(self) -> str:
        return f"AdaComp(bin_size={self.bin_size}, error_feedback={self.error_feedback})"


def make_compressor(method: str | Compressor, **options: Any) -> Compressor:
    """A compressor from a registered name (``options`` go to its constructor) or as is.

    ``"dense"`` gives :class:`DenseAllReduce`, the uncompressed baseline.
    """
    if isinstance(method, Compressor):
        if options:
            raise TypeError("options are for a method name; this compressor is already built")
        return method
    if method == "dense":
        return DenseAllReduce(**options)
    if method not in METHODS:
        registry_get(method, "ephemeral")  # unknown name: raises with suggestions
        raise ValueError(
            f"{method!r} is not a gradient compressor; choose one of {', '.join(METHODS)} "
            f"or 'dense'"
        )
    return registry_get(method, "ephemeral")(**options)


def register_hook(
    ddp_model: nn.parallel.DistributedDataParallel,
    method: str | Compressor = "topk",
    **options: Any,
) -> Compressor:
    """Build a compressor and register it as ``ddp_model``'s communication hook.

    Returns the compressor, whose counters and residuals can be read during training.
    """
    if not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"register_hook needs a DistributedDataParallel model, got "
            f"{type(ddp_model).__name__}; wrap it first: DistributedDataParallel(model)"
        )
    compressor = make_compressor(method, **options)
    ddp_model.register_comm_hook(compressor, comm_hook)
    return compressor
