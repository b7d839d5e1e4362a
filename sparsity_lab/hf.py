"""Hugging Face ``transformers`` causal language models: what to prune, GPT-2's ``Conv1D``,
and perplexity.

OPT- and Llama-style models are built from ``nn.Linear`` layers and prune as they are, with
every criterion and the layer-wise calibration of SparseGPT and Wanda (token ids are the
calibration data)::

    model = AutoModelForCausalLM.from_pretrained("path/to/local/checkpoint")
    sl.prune(model, "sparsegpt", 0.5, data=token_ids, targets=sl.hf.decoder_targets(model))
    sl.saving.save_pretrained(model, "pruned/")  # from_pretrained("pruned/") loads it

GPT-2 keeps its projections in ``transformers``' ``Conv1D``: an ``(in, out)`` weight used as
``x @ W + b``, the transpose of a Linear's.  :func:`to_linear` swaps each for the Linear that
computes the same function, so that patterns (N:M groups run along the inputs), the
layer-wise criteria and shrink see the usual layout; :func:`to_conv1d` swaps them back, and
:func:`sparsity_lab.saving.save_pretrained` does that on the copy it saves, so a checkpoint
always has the layout ``from_pretrained`` expects.  Masks move with the weights both ways.

``transformers`` is an optional dependency (``pip install "sparsity-lab[hf]"``); only
:func:`to_conv1d` imports it.  Nothing here downloads: build models from a config, or load
them from a local directory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from . import masks
from .modes import evaluating
from .targets import default_targets


class LinearFromConv1D(nn.Linear):
    """An ``nn.Linear`` that replaced a ``Conv1D`` (see :func:`to_linear`), so that
    :func:`to_conv1d` knows which to swap back."""


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is ``transformers``' ``Conv1D`` (checked by class name, masked or
    not, and shape, so that ``transformers`` need not be imported)."""
    return (
        any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
        and module.weight.dim() == 2
    )


def decoder_targets(model: nn.Module) -> list[str]:
    """The weights the LLM pruning papers prune: every Linear weight except the output
    embedding (``lm_head``), which most causal LMs tie to the input embedding, so that
    masking it would also zero the embedding of the pruned tokens."""
    convs = [path for path, m in model.named_modules() if is_conv1d(m)]
    if convs:
        raise ValueError(
            f"{type(model).__name__} has Conv1D layers ({convs[0]}, ...): call "
            f"sl.hf.to_linear(model) first, so that they are pruned in the Linear layout"
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name in default_targets(model)
        if head is None or model.get_submodule(name.rpartition(".")[0]) is not head
    ]


def _swap(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, child, new)


def _moved(old: nn.Module, new: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None):
    """Give ``new`` the transposed ``weight`` (stored values, pruned ones included) and the
    bias of ``old``, and ``old``'s mask, transposed, in its gradient mode."""
    mask = masks.get_mask(old, "weight")
    with torch.no_grad():
        new.weight.copy_(weight.T)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(masks.dense_weight(old, "weight").requires_grad)
    if bias is not None:
        new.bias.requires_grad_(bias.requires_grad)
    new.train(old.training)
    if mask is not None:
        holder = old.parametrizations["weight"][0]
        masks.attach(new, "weight", mask.T.contiguous(), dense_grad=holder.dense_grad)
    return new


def to_linear(model: nn.Module) -> nn.Module:
    """Replace every ``Conv1D`` of ``model`` by the equal :class:`LinearFromConv1D`, in place;
    returns ``model``.  Weights, biases, masks and train/eval modes move across."""
    for path, module in list(model.named_modules()):
        if not is_conv1d(module):
            continue
        weight = masks.dense_weight(module, "weight").detach()
        n_in, n_out = weight.shape
        new = LinearFromConv1D(n_in, n_out, device=weight.device, dtype=weight.dtype)
        _swap(model, path, _moved(module, new, weight, module.bias))
    return model


def to_conv1d(model: nn.Module) -> nn.Module:
    """Undo :func:`to_linear` in place: every :class:`LinearFromConv1D` becomes a
    ``transformers`` ``Conv1D`` again, with its weights and masks.  Returns ``model``."""
    linears = [(p, m) for p, m in model.named_modules() if isinstance(m, LinearFromConv1D)]
    if not linears:
        return model
    from transformers.pytorch_utils import Conv1D  # the optional dependency, only here

    for path, module in linears:
        weight = masks.dense_weight(module, "weight").detach()
        n_out, n_in = weight.shape
        new = Conv1D(n_out, n_in).to(device=weight.device, dtype=weight.dtype)
        _swap(model, path, _moved(module, new, weight, module.bias))
    return model


def converted(model: nn.Module) -> bool:
    """Whether ``model`` holds layers that :func:`to_linear` converted."""
    return any(isinstance(m, LinearFromConv1D) for m in model.modules())


def perplexity(model: nn.Module, token_ids: torch.Tensor | Iterable, batch_size: int = 8) -> float:
    """``exp`` of the mean next-token negative log-likelihood of a causal LM.

    ``token_ids``: a ``(sequences, length)`` tensor, or batches of them.  Each sequence is
    scored on its own (no state between sequences), every position predicting the next,
    and the mean is over all predicted tokens.  The model's output is its logits, or an
    object with ``.logits`` (a ``transformers`` output).
    """
    batches = token_ids.split(batch_size) if torch.is_tensor(token_ids) else token_ids
    total, count = 0.0, 0
    with evaluating(model), torch.no_grad():
        for ids in batches:
            out = model(ids)
            logits = getattr(out, "logits", out)
            nll = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            )
            total += float(nll)
            count += ids[:, 1:].numel()
    if count == 0:
        raise ValueError("perplexity needs sequences of at least two tokens")
    return math.exp(total / count)
