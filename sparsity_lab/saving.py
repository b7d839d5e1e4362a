"""Saving and exporting pruned models the way other tools read them: safetensors and ONNX.

A masked model's own state dict (``torch.save(model.state_dict())``) keeps the dense
originals and the masks under ``parametrizations`` keys, which a plain
``load_state_dict`` of another program does not understand.  This module writes what
other tools expect:

- :func:`save_safetensors` writes plain keys (``"fc1.weight"``) with the masked values, so
  any safetensors reader gets the pruned model; ``with_masks=True`` adds each mask as a
  boolean ``"<name>.mask"`` tensor, so :func:`load_safetensors` can attach them again and
  training can go on with the same sparsity.  Either file is about half the size of the
  masked state dict, which stores the dense weights beside the float masks.
- :func:`save_pretrained` saves a pruned Hugging Face model so that ``from_pretrained``
  returns it pruned.  The model's own ``save_pretrained`` writes the parametrization keys,
  which ``from_pretrained`` does not know: it initialises those weights afresh, with only
  a warning, and the pruned model comes back dense and untrained.  The masks go beside the
  weights (:data:`PRETRAINED_MASKS`), and :func:`load_pretrained_masks` attaches them again.
- :func:`export_onnx` exports a squashed copy (``shrink=True``: the smaller dense model of
  :func:`sparsity_lab.shrink.shrink`, with removed channels gone) through
  ``torch.onnx.export``.  Unstructured zeros stay as zeros in dense initializers: ONNX has
  no standard sparse-weight operator that common runtimes accelerate, and the sparse
  kernels of :func:`sparsity_lab.accel.export` are Python modules that cannot be
  exported.  Shrink what is structured, and leave unstructured sparsity to a runtime that
  compresses weights itself, or to :func:`sparsity_lab.accel.export` in Python.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from . import hf, masks

#: The suffix of a mask's key in a file written with ``with_masks=True``.
MASK_SUFFIX = ".mask"
#: The file beside a Hugging Face checkpoint that holds its masks (see save_pretrained).
PRETRAINED_MASKS = "sparsity_masks.safetensors"


def _needs(package: str, extra: str) -> None:
    raise ImportError(f"this needs {package}: pip install {extra}")


def _safetensors():
    """``safetensors.torch``, or an error that says how to install it."""
    try:
        import safetensors.torch
    except ImportError:
        _needs("safetensors", "safetensors")
    return safetensors.torch


def save_safetensors(
    model: nn.Module, path: str | os.PathLike, *, with_masks: bool = False
) -> Path:
    """Write ``model``'s weights to ``path`` as safetensors, with plain keys; returns it.

    Masked weights are written as ``weight * mask`` (exact zeros); ``with_masks`` adds each
    mask as ``"<name>.mask"`` (bool).  Metadata records the format and the masked names.
    """
    save_file = _safetensors().save_file
    state = {k: v.detach().contiguous().clone() for k, v in masks.plain_state_dict(model).items()}
    found = masks.masks(model)
    if with_masks:
        clash = [f"{n}{MASK_SUFFIX}" for n in found if f"{n}{MASK_SUFFIX}" in state]
        if clash:
            raise ValueError(f"the model already has tensors named {clash}; save without masks")
        state.update(
            {f"{n}{MASK_SUFFIX}": m.detach().bool().contiguous() for n, m in found.items()}
        )
    path = Path(path)
    metadata = {
        "format": "pt",
        "written_by": "sparsity-lab",
        "masks": "saved" if with_masks else "squashed",
        "masked": ",".join(found),
    }
    save_file(state, str(path), metadata=metadata)
    return path


def load_safetensors(
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True
) -> nn.Module:
    """Load a file of :func:`save_safetensors` (or any plain safetensors) into ``model``.

    Masks saved with the file are attached (replacing the model's own); a file without
    masks loaded into a masked model keeps that model's masks, so masked entries stay zero.
    ``strict`` refuses missing and unexpected keys, naming them.  Returns ``model``.
    """
    load_file = _safetensors().load_file
    state = load_file(str(path))
    saved_masks = {
        k[: -len(MASK_SUFFIX)]: state.pop(k)
        for k in list(state)
        if k.endswith(MASK_SUFFIX) and k[: -len(MASK_SUFFIX)] in state
    }
    masks.load_state_dict(model, state, strict=strict)
    for name, mask in saved_masks.items():
        masks.attach(model, name, mask)
    return model


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, *, with_masks: bool = True, **options
) -> Path:
    """Save a pruned Hugging Face model (``transformers.PreTrainedModel``) to ``directory``.

    A squashed copy (plain keys, pruned entries exact zeros) goes through the model's own
    ``save_pretrained`` (``options`` are passed on), so ``from_pretrained`` gives the pruned
    weights; ``with_masks`` also writes the masks to :data:`PRETRAINED_MASKS` in the same
    directory, for :func:`load_pretrained_masks`.  The model itself keeps its masks.  Layers
    that :func:`sparsity_lab.hf.to_linear` converted are saved as the ``Conv1D`` they were,
    masks transposed with them, so the checkpoint loads into the model's own class.
    """
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(
            f"{type(model).__name__} has no save_pretrained (not a Hugging Face model); use "
            "save_safetensors(model, path) instead"
        )
    plain = hf.to_conv1d(copy.deepcopy(model))
    found = masks.masks(plain)
    masks.squash(plain)
    directory = Path(directory)
    plain.save_pretrained(directory, **options)
    if with_masks and found:
        save_file = _safetensors().save_file
        tensors = {n: m.detach().bool().contiguous() for n, m in found.items()}
        save_file(tensors, str(directory / PRETRAINED_MASKS), metadata={"format": "pt"})
    return directory


def load_pretrained_masks(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Attach the masks that :func:`save_pretrained` wrote beside a checkpoint to ``model``
    (loaded with ``from_pretrained``), so further training keeps the pruned entries at zero.
    Returns ``model``."""
    path = Path(directory) / PRETRAINED_MASKS
    if not path.is_file():
        raise FileNotFoundError(
            f"no {PRETRAINED_MASKS} in {directory}: it was saved without masks (the pruned "
            "values are in the weights; prune again to attach masks)"
        )
    load_file = _safetensors().load_file
    for name, mask in load_file(str(path)).items():
        masks.attach(model, name, mask)
    return model


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_input: torch.Tensor | None = None,
    *,
    shrink: bool = False,
    external_data: bool = True,
    opset_version: int | None = None,
) -> Path:
    """Export a squashed (or shrunk) copy of ``model`` to ONNX at ``path``; returns it.

    ``model`` is left as it is.  ``example_input`` defaults to a random batch of
    ``model.input_shape`` (:func:`sparsity_lab.shrink.example_batch`); the batch dimension
    is exported as dynamic.  ``shrink=True`` first removes whole pruned channels, heads and
    blocks (:func:`sparsity_lab.shrink.shrink`), so the file is smaller and faster
    everywhere.  ``external_data`` (torch's default) writes the weights beside the graph, in
    ``<path>.data``, as models over 2 GB need; False puts everything in one file.
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError:
        _needs("onnx and onnxscript", "onnx onnxscript")
    from . import shrink as shrink_mod  # loads pandas: only an ONNX export needs it

    x = shrink_mod.example_batch(model) if example_input is None else example_input
    if shrink:
        work = shrink_mod.shrink(model, x)
    else:
        work = masks.squash(copy.deepcopy(model))
    work.eval()
    path = Path(path)
    options = {} if opset_version is None else {"opset_version": opset_version}
    with torch.no_grad():
        torch.onnx.export(
            work,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=external_data,
            verbose=False,
            **options,
        )
    return path
