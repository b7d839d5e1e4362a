"""Which tensors are pruned: the prunable layer types, the default targets, and resolution.

A leaf module (it imports only torch), so every layer of the library, from patterns to
criteria and training methods, can ask "what does this model prune?" the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

#: Layer types whose ``weight`` is pruned when no targets are named.
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_targets(model: nn.Module) -> list[str]:
    """Names of the weights of every Linear and Conv layer, in module order."""
    return [
        f"{path}.weight" if path else "weight"
        for path, m in model.named_modules()
        if isinstance(m, PRUNABLE)
    ]


def resolve(
    model: nn.Module,
    targets: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    dense: Iterable[str] = (),
) -> list[str]:
    """The pruned tensors: ``targets`` (default: every Linear/Conv weight) minus ``exclude``.

    Tensors in ``dense`` stay in the list: they are counted in the sparsity target but get
    no mask.  Naming in ``exclude`` or ``dense`` a tensor that is not a target is an error,
    since a misspelt name would otherwise be pruned silently.
    """
    for what, value in (("targets", targets), ("exclude", exclude), ("dense", dense)):
        if isinstance(value, str):
            raise TypeError(
                f"{what} is a list of parameter names, got the string {value!r}; "
                f"pass {what}=[{value!r}]"
            )
    names = list(default_targets(model) if targets is None else targets)
    excluded = set(exclude)
    unknown = (excluded | set(dense)) - set(names)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not pruning targets; targets are {names}")
    names = [n for n in names if n not in excluded]
    if not names:
        raise ValueError("nothing to prune: the model has no Linear or Conv weights left")
    for name in names:
        _refuse_computed(model, name)
    _refuse_tied(model, names)
    if set(names) <= set(dense):
        raise ValueError(
            f"every target is kept dense ({names}): nothing is left to prune; keep fewer "
            f"layers in dense=[...]"
        )
    return names


def _refuse_computed(model: nn.Module, name: str) -> None:
    """A weight that another tool computes is no parameter masks can attach to: say which
    tool, and how to hand the weight back, instead of failing later on a missing
    parameter."""
    from torch.nn.utils import parametrize  # a torch submodule: no cycle, no weight

    path, _, tensor = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return  # an unknown name fails later, with the list of parameters
    if hasattr(module, f"{tensor}_orig") and hasattr(module, f"{tensor}_mask"):
        raise ValueError(
            f"{name!r} is pruned by torch.nn.utils.prune; make its mask permanent first "
            f"(mask = module.{tensor}_mask.clone(); torch.nn.utils.prune.remove(module, "
            f"{tensor!r})) and attach it with sparsity_lab.masks.attach(model, {name!r}, "
            f"mask), or start from the unpruned model"
        )
    if hasattr(module, f"{tensor}_g") and hasattr(module, f"{tensor}_v"):
        raise ValueError(
            f"{name!r} is computed by torch.nn.utils.weight_norm from {tensor}_g and "
            f"{tensor}_v; remove it with torch.nn.utils.remove_weight_norm(module) before "
            f"pruning (and apply it again afterwards if you need it)"
        )
    if parametrize.is_parametrized(module, tensor):
        first = module.parametrizations[tensor][0]
        if type(first).__name__ != "Mask":
            raise ValueError(
                f"{name!r} is computed by the parametrization {type(first).__name__} "
                f"(weight_norm, spectral_norm, ...); masks attach to plain weights: remove it "
                f"with torch.nn.utils.parametrize.remove_parametrizations(module, {tensor!r}) "
                f"before pruning"
            )


def _refuse_tied(model: nn.Module, names: list[str]) -> None:
    """A weight shared by two layers (an embedding tied to the output head) would be masked
    in one use and left dense in the other, whose gradient then regrows the masked
    entries: refuse it, naming both uses."""
    uses: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        uses.setdefault(id(param), []).append(name)
    for name in names:
        path, _, tensor = name.rpartition(".")
        try:
            module = model.get_submodule(path) if path else model
        except AttributeError:
            continue
        param = module._parameters.get(tensor)
        shared = uses.get(id(param), []) if param is not None else []
        if len(shared) > 1:
            raise ValueError(
                f"{name!r} is tied: the same tensor is also {sorted(set(shared) - {name})}, "
                f"so a mask on one use would leave the other dense and its gradient would "
                f"regrow the pruned entries.  Untie them (give one layer its own copy: "
                f"layer.weight = nn.Parameter(layer.weight.detach().clone())) or exclude "
                f"{name!r}"
            )
