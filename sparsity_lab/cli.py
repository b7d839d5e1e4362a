"""The ``sparsity-lab`` command.

``sparsity-lab list`` prints the registry by kind; ``sparsity-lab prune`` trains (or loads
from the checkpoint cache) a dense model, prunes it, fine-tunes it and prints the report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from . import registry


def _list(args: argparse.Namespace) -> int:
    for kind, entries in registry.by_kind().items():
        if args.kind and kind != args.kind:
            continue
        if not entries:
            if args.kind:
                print(f"{kind} (0): none registered yet")
            continue
        print(f"{kind} ({len(entries)})")
        width = max(len(e.name) for e in entries)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.summary}")
    return 0


def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"sparsity must be a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"sparsity must be in [0, 1), got {value}; e.g. 0.9 keeps 10% of the weights"
        )
    return value


def _prune(args: argparse.Namespace) -> int:
    import sparsity_lab as sl
    from sparsity_lab import patterns, recipes

    # Validate names before any slow work, so a typo costs nothing.
    registry.get(args.method, "criterion")
    registry.get(args.budget, "budget")
    pattern = patterns.get(args.pattern)
    sparsity = args.sparsity
    if pattern.fixed_sparsity is not None and sparsity is None:
        sparsity = pattern.fixed_sparsity

    t = recipes.task(args.model, args.data, seed=args.seed)
    cache = False if args.no_cache else args.cache_dir
    model, dense = recipes.train_dense(
        t, epochs=args.epochs, lr=args.lr, cache_dir=cache, progress=args.progress
    )
    source = "loaded from cache" if dense["cached"] else f"trained for {args.epochs} epochs"
    print(
        f"dense {args.model} on {args.data} ({source}): test accuracy {dense['test_accuracy']:.4f}"
    )
    result = recipes.prune_and_finetune(
        model,
        t,
        args.method,
        sparsity,
        pattern=pattern,
        budget=args.budget,
        dense=args.dense,
        exclude=args.exclude,
        finetune_epochs=args.finetune_epochs,
        lr=args.finetune_lr,
        progress=args.progress,
    )
    print(
        f"pruned with {args.method}, {pattern!r}, budget {args.budget}: "
        f"sparsity {result['measured_sparsity']:.4f}, "
        f"val accuracy {result['pruned_accuracy']:.4f} before fine-tuning, "
        f"test accuracy {result['test_accuracy']:.4f} after {args.finetune_epochs} epoch(s)"
    )
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(sl.report(model).to_string(index=False))
    if args.save:
        import torch

        torch.save(model.state_dict(), args.save)
        print(f"saved the masked state dict to {args.save}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    from sparsity_lab import data, models

    parser = argparse.ArgumentParser(
        prog="sparsity-lab", description="Pruning and growth for efficient neural networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="print the registered methods, grouped by kind")
    p_list.add_argument("--kind", choices=registry.KINDS, help="only this kind")
    p_list.set_defaults(run=_list)

    p = sub.add_parser("prune", help="train (or load), prune, fine-tune and report")
    p.add_argument("--model", required=True, choices=models.available())
    p.add_argument("--data", required=True, choices=data.available())
    p.add_argument("--method", required=True, help="a criterion, e.g. magnitude or random")
    p.add_argument("--sparsity", type=_sparsity, default=None, help="fraction of zeros in [0, 1)")
    p.add_argument(
        "--pattern", default="unstructured", help="unstructured, 2:4, block:4x4, channel, input"
    )
    p.add_argument("--budget", default="global", help="global, uniform, er or erk")
    p.add_argument("--dense", nargs="*", default=[], help="weights kept dense, e.g. fc3.weight")
    p.add_argument("--exclude", nargs="*", default=[], help="weights left out of pruning")
    p.add_argument("--epochs", type=int, default=10, help="dense training epochs")
    p.add_argument("--lr", type=float, default=0.05, help="dense learning rate")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="checkpoint cache (default ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="always train the dense model")
    p.add_argument("--save", default=None, help="write the pruned model's state dict here")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(run=_prune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsity-lab`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "prune":
        from sparsity_lab import patterns

        try:
            fixed = patterns.get(args.pattern).fixed_sparsity
        except ValueError as err:
            parser.error(str(err))
        if fixed is None and args.sparsity is None:
            parser.error("--sparsity is required unless the pattern fixes it (N:M)")
        # a --sparsity that contradicts an N:M pattern is a mistake: catch it before training
        if fixed is not None and args.sparsity is not None and abs(args.sparsity - fixed) > 1e-9:
            parser.error(
                f"--pattern {args.pattern} fixes the sparsity at {fixed:g}, got --sparsity "
                f"{args.sparsity:g}; leave out --sparsity"
            )
        # the dense model must be trained, fine-tuning may be skipped
        if args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        if args.finetune_epochs < 0:
            parser.error(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    try:
        return args.run(args)
    except (KeyError, ValueError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        parser.error(str(message))
    return 2


if __name__ == "__main__":
    sys.exit(main())
