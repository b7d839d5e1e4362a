"""Masks: attach, inspect, update, squash and remove.

A mask is a ``torch.nn.utils.parametrize`` parametrization of a parameter: the tensor the
module uses in ``forward`` is ``original * mask``, so masked entries are exactly zero in
every forward pass, whatever an optimizer does to the stored ``original`` (momentum, weight
decay, Adam's moments).  Masks are named by the parameter's path in the model, e.g.
``"fc1.weight"``.

Two gradient modes:

* default: the gradient of a masked entry is zero, and :func:`attach` also zeroes the stored
  value, so ``original`` itself is sparse and :func:`remove` resumes dense training from the
  pruned weights;
* ``dense_grad=True``: the gradient passes through the mask unchanged (straight-through), so
  masked entries of ``original`` keep receiving updates.  Methods that need the dense
  gradient or dense weights (RigL's growth, DPF, AC/DC, Top-KAST) use this mode.

Masked modules pickle and deepcopy: a masked module pickles as its plain module plus its
masks and is rebuilt with the masks attached (``parametrize`` alone refuses to pickle).

Inside :func:`fast_training` (which :func:`sparsity_lab.train.fit` uses when no callback can
change the masks) a default-mode mask skips its forward multiplication and masks only the
accumulated gradient: the same numbers at close to dense cost.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "Mask",
    "attach",
    "set_mask",
    "get_mask",
    "masks",
    "is_masked",
    "squash",
    "remove",
    "plain_state_dict",
    "load_state_dict",
    "fast_training",
    "ZERO_PRESERVING",
]


class _StraightThrough(torch.autograd.Function):
    """``x * mask`` in forward, identity in backward: the dense gradient reaches ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


#: The state-dict key (after the mask's prefix) that holds its gradient mode.
DENSE_GRAD_KEY = "dense_grad"


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a 0/1 ``mask`` buffer of ``w``'s shape and dtype.

    The mask is a buffer, so it follows ``.to()``, lives in ``state_dict`` and is never
    touched by an optimizer.  It is stored in the weight's dtype because a multiplication by
    a same-dtype tensor is the cheapest exact way to zero entries.
    """

    #: True inside :func:`fast_training`: the stored weight is trusted to be zero under the
    #: mask, so forward returns it unchanged.  Never saved, pickled or copied.
    fast = False
    _fast_version = -1

    def __init__(self, mask: torch.Tensor, dense_grad: bool = False) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())
        self.dense_grad = dense_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            if self.mask._version == self._fast_version:
                return x
            self.fast = False  # the mask was edited in place: multiply again
        if self.dense_grad and torch.is_grad_enabled():
            return _StraightThrough.apply(x, self.mask)
        return x * self.mask

    # The gradient mode is part of a training run (RigL, DPF and AC/DC keep dense values
    # under the mask): it travels in the state dict as a 0-d tensor, so that resuming from a
    # state dict, also one read with torch.load(weights_only=True), resumes the same run.
    # It stays a Python bool on the module: forward reads it at every call.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + DENSE_GRAD_KEY] = torch.tensor(self.dense_grad)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        flag = state_dict.pop(prefix + DENSE_GRAD_KEY, None)
        if flag is not None:  # state dicts written before the flag was saved keep the mode
            self.dense_grad = bool(flag)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __getstate__(self) -> dict:
        # A copy has no optimizer bound to it, so it starts as an ordinary mask.
        state = dict(self.__dict__)
        state.pop("fast", None)
        state.pop("_fast_version", None)
        return state

    def extra_repr(self) -> str:
        kept = int(self.mask.count_nonzero())
        return f"sparsity={1 - kept / self.mask.numel():.4f}, dense_grad={self.dense_grad}"


# --- locating parameters ------------------------------------------------------------------


def _split(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``"block.0.fc.weight"`` -> (the ``block.0.fc`` module, ``"weight"``)."""
    path, _, tensor_name = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError as err:
        raise KeyError(f"no module {path!r} in the model (from parameter name {name!r})") from err
    return module, tensor_name


def _mask_module(module: nn.Module, tensor_name: str) -> Mask | None:
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, Mask):
            return p
    return None


def _check_mask(mask: torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(
            f"mask for {name!r} has shape {tuple(mask.shape)}, but the parameter has shape "
            f"{tuple(like.shape)}; build the mask from the parameter's shape"
        )
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"mask for {name!r} must hold only 0 and 1 (or be a bool tensor)")
    return mask.to(device=like.device, dtype=like.dtype)


# --- attaching and updating ---------------------------------------------------------------


def attach(
    model: nn.Module, name: str, mask: torch.Tensor, *, dense_grad: bool = False
) -> nn.Module:
    """Mask parameter ``name`` of ``model`` with a 0/1 (or bool) ``mask``; returns ``model``.

    If the parameter is already masked, the mask is replaced (see :func:`set_mask`) in the
    new gradient mode: leaving a straight-through mask (``dense_grad=True``) for the default
    zeroes the stored values of the pruned weights, as a first attach does.
    """
    module, tensor_name = _split(model, name)
    holder = _mask_module(module, tensor_name)
    if holder is not None:
        holder.dense_grad = dense_grad
        set_mask(model, name, mask)
        return model
    param = getattr(module, tensor_name, None)
    if not isinstance(param, nn.Parameter):
        raise KeyError(
            f"{name!r} is not a parameter of the model; masks attach to parameters such as "
            f"'fc1.weight' (see model.named_parameters())"
        )
    mask = _check_mask(mask, param, name)
    _own_class(module)
    if not dense_grad:
        with torch.no_grad():
            param.mul_(mask)
    # unsafe=True skips parametrize's consistency probe, a full extra forward of the mask.
    parametrize.register_parametrization(
        module, tensor_name, Mask(mask, dense_grad=dense_grad), unsafe=True
    )
    _make_picklable(module)
    return model


def set_mask(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Replace the mask of an already masked parameter in place (no new parametrization).

    In the default gradient mode newly pruned entries of the stored weight are zeroed, so
    they cannot come back with stale values when the mask later grows them again.
    """
    module, tensor_name = _split(model, name)
    holder = _mask_module(module, tensor_name)
    if holder is None:
        raise KeyError(f"{name!r} has no mask; use sparsity_lab.masks.attach first")
    mask = _check_mask(mask, holder.mask, name)
    # A changed mask leaves fast training: the optimizer's state for newly pruned entries
    # is not zero, so only the forward multiplication keeps them out.
    holder.fast = False
    with torch.no_grad():
        if not holder.dense_grad:
            # Optimizer state (momentum, Adam moments) keeps moving the stored value of a
            # masked entry; zero it under the old mask so that regrown entries start at zero.
            original = module.parametrizations[tensor_name].original
            original.mul_(holder.mask)
            original.mul_(mask)
        holder.mask.copy_(mask)


def get_mask(model: nn.Module, name: str) -> torch.Tensor | None:
    """The 0/1 mask of parameter ``name`` (a view of the live buffer), or None if unmasked."""
    module, tensor_name = _split(model, name)
    holder = _mask_module(module, tensor_name)
    return None if holder is None else holder.mask


def is_masked(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` carries a mask."""
    return get_mask(model, name) is not None


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask in ``model``, keyed by parameter name (``"fc1.weight"``), in module order."""
    found: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in module.parametrizations:
            holder = _mask_module(module, tensor_name)
            if holder is not None:
                found[f"{path}.{tensor_name}" if path else tensor_name] = holder.mask
    return found


def weight(model: nn.Module, name: str) -> torch.Tensor:
    """The tensor the model computes with for ``name`` (masked where a mask exists)."""
    module, tensor_name = _split(model, name)
    return getattr(module, tensor_name)


def dense_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The stored dense tensor behind ``name`` (``original`` when masked).

    This is the tensor an optimizer updates.
    """
    module, tensor_name = _split(model, name)
    if parametrize.is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original
    return getattr(module, tensor_name)


# --- removing -----------------------------------------------------------------------------


def remove(
    model: nn.Module, names: Iterable[str] | None = None, *, restore_dense: bool = False
) -> nn.Module:
    """Remove masks so that training is dense again; returns ``model``.

    By default each parameter becomes ``original * mask``: pruned entries start at zero and
    are free to grow.  ``restore_dense=True`` brings back the stored dense values instead,
    which is what a ``dense_grad`` method such as DPF or AC/DC keeps them for.
    """
    for name in list(masks(model) if names is None else names):
        module, tensor_name = _split(model, name)
        holder = _mask_module(module, tensor_name)
        if holder is None:
            raise KeyError(f"{name!r} has no mask to remove")
        holder.fast = False
        if not restore_dense:
            with torch.no_grad():
                module.parametrizations[tensor_name].original.mul_(holder.mask)
        _own_class(module)
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
    return model


def squash(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """Make masks permanent: every masked parameter becomes a plain tensor with exact zeros.

    The mask machinery is gone afterwards (plain ``nn.Module`` again); the zeros stay only
    until an optimizer moves them, as with any dense weight.
    """
    return remove(model, names, restore_dense=False)


# --- fast training ------------------------------------------------------------------------

#: Optimizers whose update of an entry with zero value, zero gradient and zero state is
#: exactly zero, with any weight decay, momentum, Nesterov or AMSGrad setting (tested for
#: each).  Subclasses are not trusted: they may change ``step``.
ZERO_PRESERVING: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adamax,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)


#: Optimizer state that carries past updates (first moments): zeroed under the mask on
#: entry.  Second moments stay as they are: with a zero gradient and a zero first moment
#: they move nothing, and zeroing them could divide zero by zero (Adagrad with eps=0).
_FIRST_MOMENTS = ("momentum_buffer", "exp_avg", "grad_avg")


def _fast_candidates(model: nn.Module) -> Iterator[tuple[str, Mask, nn.Parameter]]:
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for name in masks(model):
        module, tensor_name = _split(model, name)
        chain = module.parametrizations[tensor_name]
        holder = _mask_module(module, tensor_name)
        # Only a lone default-mode mask on a weight used once: a straight-through mask
        # keeps dense values under the mask, another parametrization would see the unmasked
        # weight, and a tied weight's gradient mixes its uses (each masked its own way).
        # A mask already fast belongs to an enclosing block.
        if len(chain) == 1 and not holder.dense_grad and not holder.fast:
            if uses.get(id(chain.original), 0) == 1:
                yield name, holder, chain.original


@contextlib.contextmanager
def fast_training(model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[list[str]]:
    """Train masked weights at close to dense cost inside this block; yields the names.

    Outside the block a mask multiplies the weight in every forward pass and the gradient in
    every backward pass.  Inside it, for each default-mode mask, the forward pass uses the
    stored weight as it is and only the accumulated gradient is masked (one multiplication
    instead of two).  Masked weights stay exactly zero because all of their update is zero:

    * the stored value is zero (:func:`attach` and :func:`set_mask` zero it; this block
      zeroes it again on entry);
    * the gradient is masked, so gradients, clipping and score trackers see the same numbers
      as outside the block;
    * ``optimizer``'s first moments (momentum, Adam's ``exp_avg``) are zeroed under the mask
      on entry, and with zero value, gradient and first moment an optimizer of
      :data:`ZERO_PRESERVING` leaves the entry at zero.

    Anything else keeps the ordinary mask: an optimizer of another class (the block then
    yields an empty list), ``dense_grad`` masks, a weight used by several modules (tied),
    a mask already fast in an enclosing block, and any mask changed or removed inside the
    block (:func:`set_mask` and :func:`remove` leave fast mode, and so does a mask edited in
    place, at its next forward pass, since the optimizer's state for newly pruned entries
    is not zero).  Inside the block ``module.weight`` is the stored parameter itself, so an
    in-place write to it changes the stored weight.  On exit the pruned entries are
    checked: if something other than ``optimizer`` wrote to them (NaN included), a
    ``RuntimeWarning`` says so and they are zeroed again.  Kept weights follow exactly the
    updates they get outside the block.
    """
    if type(optimizer) not in ZERO_PRESERVING:
        yield []
        return
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    handles, fast = [], []
    try:
        for name, holder, original in _fast_candidates(model):
            if id(original) not in optimized:
                continue
            keep = holder.mask
            with torch.no_grad():
                original.masked_fill_(keep == 0, 0.0)
                for key, value in optimizer.state.get(original, {}).items():
                    if key in _FIRST_MOMENTS and value.shape == original.shape:
                        value.masked_fill_(keep == 0, 0.0)

            def mask_grad(param: torch.Tensor, holder: Mask = holder) -> None:
                if holder.fast:  # False once the mask changed inside the block
                    param.grad.mul_(holder.mask)

            if original.requires_grad:  # a frozen weight gets no gradient and no update
                handles.append(original.register_post_accumulate_grad_hook(mask_grad))
            holder._fast_version = holder.mask._version
            holder.fast = True
            fast.append((name, holder, original))
        yield [name for name, _, _ in fast]
    finally:
        for handle in handles:
            handle.remove()
        revived, diverged = [], []
        for name, holder, original in fast:
            if not holder.fast:
                continue
            holder.fast = False
            with torch.no_grad():
                pruned = holder.mask == 0
                values = original[pruned]
                if bool(values.ne(0).any()):  # NaN counts: it is not zero
                    # a NaN gradient stays NaN under the mask (NaN * 0), as with ordinary
                    # masks: that is a diverged training, not a foreign write
                    (diverged if bool(values.isnan().any()) else revived).append(name)
                    original.masked_fill_(pruned, 0.0)
        if diverged:
            warnings.warn(
                f"pruned weights of {', '.join(diverged)} became NaN during fast_training: the "
                "training diverged (a NaN gradient stays NaN under a mask); they are zeroed "
                "again. Lower the learning rate or check the loss.",
                RuntimeWarning,
                stacklevel=3,
            )
        if revived:
            warnings.warn(
                f"pruned weights of {', '.join(revived)} were written during fast_training by "
                "something other than its optimizer, so forward passes inside the block saw "
                "them; they are zeroed again. Change masks with sparsity_lab.masks.set_mask, "
                "or train without fast_training.",
                RuntimeWarning,
                stacklevel=3,
            )


# --- state dicts --------------------------------------------------------------------------

_ORIGINAL = ".parametrizations.{}.original"
_MASK = ".parametrizations.{}.0.mask"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with plain keys (``"fc1.weight"``) and masked values, for an unmasked model."""
    state = {}
    masked = masks(model)
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        state[key] = value
    for name in masked:
        state[name] = weight(model, name).detach().clone()
    return state


def load_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True
) -> nn.Module:
    """Load ``state`` into ``model``, attaching the masks it carries; returns ``model``.

    Accepts the state dict of a masked model (keys ``...parametrizations.weight.original`` and
    ``...parametrizations.weight.0.mask``) for a plain or a masked ``model``, and a plain state
    dict for either.  A plain state dict loaded into a masked model re-applies that model's
    masks, so masked entries stay zero.
    """
    state = dict(state)
    wanted_masks: dict[str, torch.Tensor] = {}
    for key in list(state):
        if key.endswith(".0.mask") and ".parametrizations." in key:
            prefix, _, rest = key.partition(".parametrizations.")
            tensor_name = rest[: -len(".0.mask")]
            name = f"{prefix}.{tensor_name}" if prefix else tensor_name
            wanted_masks[name] = state[key]
    for name, mask in wanted_masks.items():
        if get_mask(model, name) is None:
            attach(model, name, torch.ones_like(mask))
    # Translate plain keys of masked parameters into parametrize's keys, and back.
    existing = masks(model)
    for name in existing:
        module_path, _, tensor_name = name.rpartition(".")
        prefix = f"{module_path}." if module_path else ""
        original_key = f"{prefix}parametrizations.{tensor_name}.original"
        mask_key = f"{prefix}parametrizations.{tensor_name}.0.mask"
        if name in state and original_key not in state:
            state[original_key] = state.pop(name)
            state.setdefault(mask_key, existing[name].detach().clone())
    model.load_state_dict(state, strict=strict)
    for name, mask in existing.items():
        set_mask(model, name, mask)  # zero the stored weight under the mask
    return model


# --- pickling -----------------------------------------------------------------------------


def _rebuild_masked(
    cls: type, state: dict, saved: dict[str, tuple[torch.Tensor, bool]]
) -> nn.Module:
    """Unpickling counterpart of :func:`_reduce_masked`: rebuild, then re-attach the masks."""
    module = cls.__new__(cls)
    module.__setstate__(state)
    for tensor_name, (mask, dense_grad) in saved.items():
        parametrize.register_parametrization(
            module, tensor_name, Mask(mask, dense_grad=dense_grad), unsafe=True
        )
    _make_picklable(module)
    return module


def _reduce_masked(self: nn.Module, protocol: int):
    # Pickle a masked module as its plain class and state, with the dense ``original``
    # tensors in place of the parametrizations, plus the masks.  Nothing is mutated:
    # parametrize's generated class is shared with deep copies, so removing a
    # parametrization from a copy would break the original.
    plain_cls = type(self).__bases__[0]
    state = dict(self.__dict__)
    state["_parameters"] = dict(self._parameters)
    state["_modules"] = dict(self._modules)
    saved = {}
    for tensor_name, plist in state["_modules"].pop("parametrizations").items():
        holder = _mask_module(self, tensor_name)
        if holder is None or len(plist) != 1:
            raise TypeError(
                f"cannot pickle {plain_cls.__name__}: parameter {tensor_name!r} has "
                f"parametrizations other than a sparsity_lab mask; save its state_dict instead"
            )
        state["_parameters"][tensor_name] = plist.original
        saved[tensor_name] = (holder.mask, holder.dense_grad)
    if "_flat_weight_refs" in state:
        # A recurrent layer caches weak references to its weights (not picklable) and the
        # weights it last computed (masked, so not leaves): its own __setstate__ rebuilds
        # both from the parameters, as its __getstate__ arranges for an unmasked layer.
        del state["_flat_weight_refs"]
        names = state.get("_flat_weights_names", [])
        state["_flat_weights"] = [
            state["_parameters"].get(n) if n in state["_parameters"] else None for n in names
        ]
    return (_rebuild_masked, (plain_cls, state, saved))


def _own_class(module: nn.Module) -> None:
    # parametrize adds and deletes properties on the module's generated class, and a deep
    # copy shares that class with its source; give a parametrized module a class of its
    # own before changing it, so that its copies are not changed too.
    cls = type(module)
    if parametrize.is_parametrized(module):
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _make_picklable(module: nn.Module) -> None:
    # parametrize gives each parametrized module its own generated class; teach that class
    # (and only it) how to pickle.
    type(module).__reduce_ex__ = _reduce_masked
    if isinstance(module, nn.RNNBase):
        # parametrize's deep copy copies the recurrent layer's cached (masked, non-leaf)
        # weights, which torch cannot deep-copy: copy it the way it pickles instead.
        type(module).__deepcopy__ = _deepcopy_as_pickled


def _deepcopy_as_pickled(self: nn.Module, memo: dict) -> nn.Module:
    rebuild, (cls, state, saved) = _reduce_masked(self, 4)
    return rebuild(cls, copy.deepcopy(state, memo), copy.deepcopy(saved, memo))
