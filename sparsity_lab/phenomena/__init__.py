"""Phenomena of sparse networks (survey sections 2.1, 2.4.2 and 8), as analyses.

Each module holds the measurement of one phenomenon and the experiment that shows it:

* :mod:`.structure`: early structure adaptation (how early the final mask is known);
* :mod:`.occam`: Occam's hill (regions A, B, C of accuracy against sparsity);
* :mod:`.tickets`: lottery tickets, rewinding against re-initialisation and random masks;
* :mod:`.connectivity`: linear mode connectivity (the error barrier between two trainings);
* :mod:`.collapse`: layer collapse at initialisation, with a disconnected-path detector;
* :mod:`.shuffle`: layer ratios against individual weights (masks shuffled in each layer);
* :mod:`.scale`: large-sparse against small-dense at equal nonzeros and equal FLOPs;
* :mod:`.bias`: who pays for pruning (per-class changes, PIEs, uncertainty, calibration);
* :mod:`.transfer`: transfer of sparse upstream models by linear probing and fine-tuning.

These are analyses, not methods: nothing here is registered.  The training methods they
study (IMP, early-bird, GMP, AC/DC, RigL, regularizers) come from :mod:`sparsity_lab.methods`
and :mod:`sparsity_lab.regularizers`.
"""

from . import bias, collapse, connectivity, occam, scale, shuffle, structure, tickets, transfer

__all__ = [
    "bias",
    "collapse",
    "connectivity",
    "occam",
    "scale",
    "shuffle",
    "structure",
    "tickets",
    "transfer",
]
