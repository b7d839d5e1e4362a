"""Sanity flags: the library says when a number should not be read as a result.

A pruned network at chance level, a target sparsity that was not reached, a layer pruned
away, a network whose output no longer depends on its input, a dense baseline below its
recipe, a class the model never predicts: each of these turns a comparison into noise,
and each is easy to miss in a table of accuracies.  :func:`check` returns the flags of one
run as short strings; the experiment layer (:func:`sparsity_lab.recipes.evaluate_run`)
stores them in a ``flags`` column, :func:`sparsity_lab.experiments.plot_mean_ci` marks the
flagged points, and :func:`table` lists them next to the numbers.  :func:`flagged_points`,
:func:`flags_raised` and :func:`broken_flags` say them in a notebook's sentences.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from . import masks
from .modes import evaluating

__all__ = [
    "SEPARATOR",
    "broken_flags",
    "chance_accuracy",
    "check",
    "dead_layers",
    "disconnected",
    "flagged_points",
    "flags_raised",
    "join",
    "named",
    "never_predicted",
    "table",
]

#: Flags of one run are joined with this into the ``flags`` column ("" means none).
SEPARATOR = "; "


def chance_accuracy(labels: torch.Tensor | Sequence[int], n_classes: int | None = None) -> float:
    """Accuracy of always answering the most frequent label: the floor a model must clear."""
    labels = torch.as_tensor(labels).flatten()
    if labels.numel() == 0:
        raise ValueError("chance_accuracy needs at least one label")
    counts = torch.bincount(labels, minlength=n_classes or 0)
    return float(counts.max()) / labels.numel()


def dead_layers(model: nn.Module) -> list[str]:
    """Names of the masked tensors whose mask keeps nothing (a layer pruned to 100%)."""
    return [name for name, mask in masks.masks(model).items() if not bool(mask.any())]


@torch.no_grad()
def disconnected(model: nn.Module, example_input: torch.Tensor, *, trials: int = 2) -> bool:
    """True when the output no longer depends on the input: no path survives pruning.

    Checked by running the model in evaluation mode on ``example_input``, ``trials`` random
    permutations of its values (token ids stay valid) and, for real-valued inputs, its
    negation, and comparing the outputs exactly.  A network in which every
    path from input to output crosses a pruned-away layer computes a constant (its biases),
    whatever it is given.
    """
    with evaluating(model):
        generator = torch.Generator().manual_seed(0)
        flat = example_input.flatten()
        reference = model(example_input)
        others = [flat[torch.randperm(flat.numel(), generator=generator)] for _ in range(trials)]
        if flat.is_floating_point():
            others.append(-flat)  # the other half of every ReLU's input range
        for other in others:
            other = other.reshape(example_input.shape)
            if torch.equal(other, example_input):
                continue
            if not torch.equal(model(other), reference):
                return False
        # every distinct input gave the same output: nothing reaches it from the input
        return not torch.equal(flat.unique(), flat[:1])


def never_predicted(predictions: torch.Tensor, n_classes: int) -> list[int]:
    """The classes in ``range(n_classes)`` that ``predictions`` never contains."""
    seen = set(torch.as_tensor(predictions).flatten().tolist())
    return [c for c in range(n_classes) if c not in seen]


def check(
    *,
    accuracy: float | None = None,
    chance: float | None = None,
    chance_margin: float = 0.05,
    target_sparsity: float | None = None,
    reached_sparsity: float | None = None,
    sparsity_tolerance: float = 0.005,
    model: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    predictions: torch.Tensor | None = None,
    n_classes: int | None = None,
    dense_accuracy: float | None = None,
    expected_dense_accuracy: float | None = None,
    dense_tolerance: float = 0.01,
) -> list[str]:
    """The sanity flags of one run, as short human-readable strings (empty: all clear).

    Each group of arguments switches one check on; leave it out to skip the check.

    - ``accuracy`` and ``chance``: at chance level when ``accuracy < chance +
      chance_margin * (1 - chance)``, i.e. within 5% of the way from chance to perfect.
    - ``target_sparsity`` and ``reached_sparsity``: target not reached when the reached
      sparsity is more than ``sparsity_tolerance`` below it.
    - ``model``: a masked tensor pruned to 100%; with ``example_input`` too, the network's
      output no longer depending on its input (:func:`disconnected`).
    - ``predictions`` and ``n_classes``: a class never predicted.
    - ``dense_accuracy`` and ``expected_dense_accuracy``: the dense baseline more than
      ``dense_tolerance`` below what its recipe is documented to reach.
    """
    flags = []
    if accuracy is not None and chance is not None:
        if accuracy < chance + chance_margin * (1 - chance):
            flags.append(f"at chance level ({accuracy:.3f}, chance {chance:.3f})")
    if target_sparsity is not None and reached_sparsity is not None:
        if reached_sparsity < target_sparsity - sparsity_tolerance:
            flags.append(
                f"target sparsity not reached ({reached_sparsity:.3f} < {target_sparsity:.3f})"
            )
    if model is not None:
        dead = dead_layers(model)
        if dead:
            flags.append(f"layer pruned to 100% ({', '.join(dead)})")
        if example_input is not None and disconnected(model, example_input):
            flags.append("disconnected (the output does not depend on the input)")
    if predictions is not None and n_classes is not None:
        missing = never_predicted(predictions, n_classes)
        if missing:
            shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
            flags.append(f"class never predicted ({len(missing)}: {shown})")
    if dense_accuracy is not None and expected_dense_accuracy is not None:
        if dense_accuracy < expected_dense_accuracy - dense_tolerance:
            flags.append(
                f"dense baseline below its recipe ({dense_accuracy:.3f} < "
                f"{expected_dense_accuracy:.3f})"
            )
    return flags


def join(flags: Iterable[str]) -> str:
    """The flags of one run as the one string stored in a ``flags`` column."""
    return SEPARATOR.join(flags)


def kinds(texts: Iterable[str], runs: int) -> str:
    """The kinds of flag in the flag texts of ``runs`` runs, each once, in order: a kind is
    the text before the parenthesis (``"at chance level"``).  A kind that not every flagged
    run raised says how many did: ``"class never predicted; at chance level (2 of 3)"``."""
    texts = [t for t in texts if t]
    counts: dict[str, int] = {}
    for text in texts:
        for kind in dict.fromkeys(flag.split(" (")[0] for flag in text.split(SEPARATOR) if flag):
            counts[kind] = counts.get(kind, 0) + 1
    return SEPARATOR.join(
        kind if n == len(texts) else f"{kind} ({n} of {runs})" for kind, n in counts.items()
    )


def table(df: pd.DataFrame, by: Sequence[str] | str, column: str = "flags") -> pd.DataFrame:
    """One row per group of ``by`` that raised a flag: how many runs did, and which kinds.

    A flag's kind is its text before the parenthesis (``"at chance level"``), so runs of
    one group that raised the same kind with other numbers are listed once.
    Empty when no run is flagged, so ``display(flags.table(...))`` shows at once whether
    anything needs a second look.
    """
    by = [by] if isinstance(by, str) else list(by)
    if column not in df.columns:
        raise KeyError(f"no {column!r} column; the runs must come from evaluate_run or check()")
    flagged = df[df[column].fillna("").astype(str) != ""]
    sizes = df.groupby(by, sort=False, dropna=False).size()
    rows = []
    for key, group in flagged.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        total = int(sizes[key if len(by) > 1 else key[0]])
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "flagged_runs": f"{len(group)} of {total}",
                "flags": kinds(group[column], total),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "flagged_runs", "flags"])


def note(df: pd.DataFrame, by: str, value: object, column: str = "flags") -> str:
    """The caveat to print beside a result of group ``value``: ``""`` when none of its runs
    raised a flag, else which share did and with which kinds.

    A mean or a paired interval over runs of which some collapsed (at chance level, a layer
    emptied) describes neither the collapsed runs nor the working ones, so a sentence that
    reports one must say so.
    """
    flagged = table(df, by, column)
    row = flagged[flagged[by] == value]
    if row.empty:
        return ""
    found = row.iloc[0]
    flagged, total = (int(part) for part in found["flagged_runs"].split(" of "))
    if flagged == total:
        return f"; all {total} runs flagged ({found['flags']}), so this describes failed runs"
    return (
        f"; {flagged} of {total} runs flagged ({found['flags']}), so this estimate mixes "
        f"runs that failed with runs that did not"
    )


def _text(flags: object) -> str:
    """A run's flags text; anything not a string (None, NaN in a table's empty cell) is
    no flag."""
    return flags if isinstance(flags, str) else ""


def named(text: object, kind: str) -> set[str]:
    """The names listed by the flags of ``kind`` in one run's flags text, e.g. the emptied
    tensors: ``named("layer pruned to 100% (fc2.weight, fc3.weight)", "layer pruned to
    100%")`` is ``{"fc2.weight", "fc3.weight"}``; empty when no flag of that kind fired
    (and for a text that is not a string: None, or NaN from a table).

    For a check of what a flag names (the removed block itself, or more) without parsing
    the text in a notebook.
    """
    return {
        name
        for flag in _text(text).split(SEPARATOR)
        if flag.startswith(kind) and "(" in flag
        for name in flag[flag.index("(") + 1 : -1].split(", ")
    }


def broken_flags(texts: Iterable[object]) -> list[str]:
    """The flags, in the flag texts of some runs, that say a network is broken (a layer
    pruned to 100%, at chance level, disconnected), each once, in the order first raised.

    A layer pruned away keeps its text, which names the layer; the others are cut to their
    kind (the text before the parenthesis).  A flag that not every run raised says in how
    many: ``"at chance level in 1 of 2 runs"``.  Other flags (a class never predicted) are
    left out: they weaken a result without saying that the network is broken.  A text that
    is not a string (NaN from a table's empty cell, None) is a run with no flag.
    """
    texts = [_text(text) for text in texts]
    found: dict[str, int] = {}
    for text in texts:
        kinds = set()
        for flag in filter(None, text.split(SEPARATOR)):
            if "pruned to 100%" in flag:
                kinds.add(flag)
            elif flag.startswith(("at chance level", "disconnected")):
                kinds.add(flag.split(" (")[0])
        for kind in sorted(kinds, key=text.index):
            found[kind] = found.get(kind, 0) + 1
    return [
        kind if n == len(texts) else f"{kind} in {n} of {len(texts)} runs"
        for kind, n in found.items()
    ]


def flagged_points(flagged: pd.DataFrame, label: str) -> str:
    """One sentence per row of :func:`table` (a plotted point some of whose runs raised
    sanity flags) on what its mean describes: failed runs when all of them are flagged, a
    mix of failed and working runs otherwise.

    ``label`` names a point from its row, a format string of the table's columns
    (``"{method} point at {sparsity:.0%}"``).  Returns ``""`` for an empty table.
    """
    sentences = []
    for _, row in flagged.iterrows():
        hit, runs = (int(part) for part in row["flagged_runs"].split(" of "))
        name = label.format(**row)
        if hit == runs:
            sentences.append(
                f"The {name} has {f'all {runs} runs' if runs > 1 else 'its one run'} flagged "
                f"({row['flags']}): it describes {'failed runs' if runs > 1 else 'a failed run'}."
            )
        else:
            sentences.append(
                f"The {name} has {hit} of {runs} runs flagged ({row['flags']}): its mean "
                "mixes runs that failed with runs that did not."
            )
    return "  ".join(sentences)


def flags_raised(flagged: pd.DataFrame, column: str, values: Iterable[object]) -> str:
    """The rows of :func:`table` (``flagged``) whose ``column`` is one of ``values`` in one
    sentence, ``" Flags raised: a (at chance level, 2 of 3 runs)."``, with a leading space
    to follow another sentence; ``""`` when none of them is flagged.

    For the reason given with a verdict: a difference between arms that collapsed is no
    difference between methods.
    """
    hit = flagged[flagged[column].isin(list(values))]
    if not len(hit):
        return ""
    found = zip(hit[column], hit["flags"], hit["flagged_runs"], strict=True)
    return " Flags raised: " + "; ".join(f"{a} ({f}, {n} runs)" for a, f, n in found) + "."
