"""One registry of every method, by canonical snake_case name.

Each entry has a *kind* (``pattern``, ``budget``, ``schedule``, ``criterion``,
``regularizer``, ``training``, ``ephemeral``, ``format``) and a name that is unique across
kinds, so ``get("rigl")`` needs no kind.  Modules register their entries with the
:func:`register` decorator when they are imported; :func:`available` and :func:`get` import
them first, so a user never has to.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = (
    "pattern",
    "budget",
    "schedule",
    "criterion",
    "regularizer",
    "training",
    "ephemeral",
    "format",
)

#: Sections of the survey (Hoefler et al. 2021) that registered methods belong to.  Methods
#: that came after it are filed under the section they extend (SparseGPT under 3.5).
SECTIONS = {
    "2.2": "Performance and model storage",
    "2.3": "What can be sparsified?",
    "2.4.1": "Sparsify after training",
    "2.4.2": "Sparsify during training",
    "2.4.3": "Sparse training",
    "3.1": "Structured vs. unstructured element removal",
    "3.2": "Data-free selection based on magnitude",
    "3.3": "Data-driven selection based on input or output sensitivity",
    "3.4": "Selection based on first-order Taylor expansion of the loss",
    "3.5": "Selection based on second-order Taylor expansion of the loss",
    "3.5.2": "Large-scale pruning based on second-order information",
    "3.6": "Selection based on regularization of the loss during training",
    "3.6.1": "L0 norm",
    "3.6.2": "L1 norm",
    "3.6.3": "Grouped regularization",
    "3.7": "Variational selection schemes",
    "3.8": "Other selection schemes",
    "3.9": "Parameter budgets between different layers",
    "4": "Growth: network regrowth during training",
    "5": "Ephemeral sparsity",
    "6.1": "Sparse convolutional networks",
    "6.2": "Sparse transformers",
    "7": "Speeding up sparse models",
    "8": "Discussion: lottery tickets and other phenomena",
}

# Modules whose import registers entries.  A package here registers every module inside it
# (see :func:`import_submodules`), so a new criterion file needs no edit of this list.
_PROVIDERS = (
    "sparsity_lab.patterns",
    "sparsity_lab.budgets",
    "sparsity_lab.schedules",
    "sparsity_lab.criteria",
    "sparsity_lab.methods",
    "sparsity_lab.ephemeral",
    "sparsity_lab.regularizers",
    "sparsity_lab.formats",
)


def import_submodules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every module of ``package`` but those in ``skip`` (a package's ``__init__``
    calls this on itself; ``skip`` holds modules that register nothing and load heavy ones)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


@dataclass(frozen=True)
class Entry:
    """A registered method: its canonical name, its kind and the object that implements it."""

    name: str
    kind: str
    obj: Any
    #: the survey section (a key of :data:`SECTIONS`), or None for a method outside it
    section: str | None = None

    @property
    def summary(self) -> str:
        """First line of the object's docstring."""
        doc = (getattr(self.obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""


class UnknownNameError(KeyError):
    """A name that is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0])


_ENTRIES: dict[str, Entry] = {}

# How a method of each kind is used, for the error when one is passed where another kind
# is expected (sl.prune(model, "rigl", 0.9)).
_HOW_TO_USE = {
    "pattern": lambda n: f"pass it as pattern={n!r} to sparsity_lab.prune",
    "budget": lambda n: f"pass it as budget={n!r} to sparsity_lab.prune",
    "schedule": lambda n: f"pass it as schedule={n!r} to a scheduled pruner such as gmp",
    "criterion": lambda n: f"prune with sparsity_lab.prune(model, {n!r}, sparsity)",
    "regularizer": lambda n: (
        f"train with sparsity_lab.registry.get({n!r})(sparsity=...).fit(model, loader, ...)"
    ),
    "training": lambda n: (
        f"train with sparsity_lab.registry.get({n!r})(sparsity).fit(model, loader, ...), or "
        f"drive it from your own loop with sparsity_lab.Sparsifier"
    ),
    "ephemeral": lambda n: f"see sparsity_lab.registry.get({n!r}) and sparsity_lab.ephemeral",
    "format": lambda n: f"encode with sparsity_lab.formats.get({n!r})",
}
_loaded = False


def register(kind: str, name: str, *, section: str | None = None) -> Callable[[Any], Any]:
    """Class or function decorator that registers ``obj`` under ``name`` of ``kind``.

    ``section`` files the method under a section of the survey (see :data:`SECTIONS`), which
    the book's table of methods and :func:`by_section` read.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if section is not None and section not in SECTIONS:
        raise ValueError(
            f"unknown survey section {section!r}; choose one of {', '.join(SECTIONS)}, or "
            f"leave section=None for a method outside the survey"
        )

    def decorate(obj: Any) -> Any:
        old = _ENTRIES.get(name)
        if old is not None and old.obj is not obj:
            raise ValueError(f"{name!r} is already registered as a {old.kind}")
        _ENTRIES[name] = Entry(name, kind, obj, section)
        return obj

    return decorate


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _PROVIDERS:
            importlib.import_module(module)
        _loaded = True


def available(kind: str | None = None) -> list[str]:
    """Canonical names registered, sorted; only those of ``kind`` when it is given."""
    _load()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return sorted(n for n, e in _ENTRIES.items() if kind is None or e.kind == kind)


def did_you_mean(name: str, pool: list[str]) -> str:
    """ " Did you mean 'x'?" for the names of ``pool`` closest to ``name``, or ``""``.

    Case is ignored (``"ERK"`` finds ``"erk"``)."""
    lowered = {p.lower(): p for p in pool}
    close = [
        lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    ]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def entry(name: str, kind: str | None = None) -> Entry:
    """The :class:`Entry` for ``name``.

    An unknown name raises :class:`UnknownNameError` (a ``KeyError``) that suggests the
    closest registered names.
    """
    _load()
    if not isinstance(name, str):
        raise TypeError(
            f"a method is named by a string, got {name!r}; "
            f"`sparsity_lab.registry.available({kind!r})` lists the names"
        )
    found = _ENTRIES.get(name)
    if found is not None and kind is not None and found.kind != kind:
        raise UnknownNameError(
            f"{name!r} is a {found.kind} method, not a {kind}: {_HOW_TO_USE[found.kind](name)}"
        )
    if found is None or (kind is not None and found.kind != kind):
        pool = available(kind)
        what = f"{kind} " if kind else ""
        hint = did_you_mean(name, pool)
        raise UnknownNameError(
            f"unknown {what}method {name!r}.{hint} "
            f"`sparsity_lab.registry.available({kind!r})` lists all {len(pool)}."
        )
    return found


def get(name: str, kind: str | None = None) -> Any:
    """The object registered under ``name`` (a class, a function or an instance)."""
    return entry(name, kind).obj


def by_kind() -> dict[str, list[Entry]]:
    """Every entry grouped by kind, in the order of :data:`KINDS`."""
    _load()
    groups: dict[str, list[Entry]] = {k: [] for k in KINDS}
    for e in sorted(_ENTRIES.values(), key=lambda e: e.name):
        groups[e.kind].append(e)
    return groups


def by_section() -> dict[str, list[Entry]]:
    """Every entry filed under a survey section, in the order of :data:`SECTIONS`."""
    _load()
    groups: dict[str, list[Entry]] = {s: [] for s in SECTIONS}
    for e in sorted(_ENTRIES.values(), key=lambda e: e.name):
        if e.section is not None:
            groups[e.section].append(e)
    return {s: found for s, found in groups.items() if found}
