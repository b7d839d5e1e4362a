"""The registry: canonical names from the method checklist, docstrings, suggestions."""

import re
from pathlib import Path

import pytest

from sparsity_lab import registry

CHECKLIST = Path(__file__).resolve().parents[1].parent / "shared" / "METHODS.md"


def checklist_names():
    text = CHECKLIST.read_text()
    rows = set(re.findall(r"^\| ([a-z0-9_]+) \|", text, re.M)) - {"name"}
    # a row may name a variant that has its own entry ("| cram | ..., with cram_plus |")
    variants = set(re.findall(r"^\| [a-z0-9_]+ \|.*\bwith ([a-z0-9]+_[a-z0-9_]+)", text, re.M))
    return rows | variants


FOUNDATION = {
    "pattern": {"unstructured", "nm", "block", "channel", "input"},
    "criterion": {"magnitude", "random"},
    "budget": {"uniform", "global", "er", "erk"},
    "schedule": {"one_shot", "cubic", "linear", "exponential", "cosine"},
}


@pytest.mark.parametrize("kind", sorted(FOUNDATION))
def test_foundation_entries_are_registered_under_their_kind(kind):
    assert FOUNDATION[kind] <= set(registry.available(kind))


@pytest.mark.skipif(not CHECKLIST.exists(), reason="shared/METHODS.md is not beside the repo")
def test_every_checklist_name_is_registered():
    assert checklist_names() <= set(registry.available())


def test_every_entry_cites_and_documents_itself():
    for name in registry.available():
        e = registry.entry(name)
        assert e.summary, f"{name} has no docstring"


def test_unknown_names_suggest_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'magnitude'"):
        registry.get("magnitud")
    with pytest.raises(KeyError, match="'magnitude' is a criterion method, not a budget"):
        registry.get("magnitude", "budget")


def test_groups_cover_every_entry_once():
    groups = registry.by_kind()
    names = [e.name for entries in groups.values() for e in entries]
    assert sorted(names) == registry.available()


def test_bad_kind_and_duplicate_names_fail():
    with pytest.raises(ValueError, match="unknown kind"):
        registry.available("prunerz")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("budget", "magnitude")(lambda: None)
