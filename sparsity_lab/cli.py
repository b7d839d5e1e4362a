"""The ``sparsity-lab`` command.

``sparsity-lab list`` prints the registry by kind; ``sparsity-lab prune`` trains (or loads
from the checkpoint cache) a dense model, prunes it, fine-tunes it and prints the report;
``sparsity-lab train`` trains a model from scratch with a training-time method (GMP, RigL,
AC/DC, ...) and prints the report with the training FLOPs; ``sparsity-lab bench`` runs a
benchmark config (:mod:`sparsity_lab.bench`) and writes its table and manifest;
``sparsity-lab evaluate`` measures a saved model on its test split, and ``sparsity-lab
export`` writes a saved model as safetensors or ONNX (:mod:`sparsity_lab.saving`).
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be 0 or more, got {value}")
    return value


def _prune(args: argparse.Namespace) -> int:
    import sparsity_lab as sl
    from sparsity_lab import patterns, recipes

    # Validate names before any slow work, so a typo costs nothing.
    criterion = registry.get(args.method, "criterion")
    args.budget = args.budget or criterion.default_budget
    registry.get(args.budget, "budget")
    pattern = patterns.get(args.pattern)
    sparsity = args.sparsity
    if pattern.fixed_sparsity is not None and sparsity is None:
        sparsity = pattern.fixed_sparsity

    t = recipes.task(args.model, args.data, seed=args.seed)
    # --dense, --exclude and the pattern's fit are checked on an untrained copy, before
    # the dense training they would otherwise waste
    names = sl.targets.resolve(t.build(), None, args.exclude, args.dense)
    misfits = patterns.misfits(t.build(), pattern, [n for n in names if n not in args.dense])
    if misfits:
        raise ValueError(
            f"pattern {args.pattern!r} does not fit "
            + "; ".join(f"{n}: {why}" for n, why in misfits.items())
            + ".  Keep those layers out with --exclude or --dense"
        )
    cache = False if args.no_cache else args.cache_dir
    model, dense = recipes.train_dense(
        t, epochs=args.epochs, lr=args.lr, cache_dir=cache, progress=args.progress
    )
    epochs = dense["recipe"].epochs
    source = "loaded from cache" if dense["cached"] else f"trained for {epochs} epochs"
    print(
        f"dense {args.model} on {args.data} ({source}): test accuracy {dense['test_accuracy']:.4f}"
    )
    if dense["flags"]:
        print(f"warning: {dense['flags']}")
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
        f"pruned with {args.method}, pattern {args.pattern}, budget {args.budget}: "
        f"sparsity {result['measured_sparsity']:.4f}; validation accuracy "
        f"{result['pruned_accuracy']:.4f} right after pruning, {result['val_accuracy']:.4f} "
        f"after {args.finetune_epochs} fine-tuning epoch(s); test accuracy "
        f"{result['test_accuracy']:.4f} (dense: {dense['test_accuracy']:.4f})"
    )
    if result["flags"]:
        print(f"warning: {result['flags']}")
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        # the storage column counts the pattern's own format (CSR, N:M, blocks...)
        print(sl.report(model, pattern=pattern).to_string(index=False))
    if args.save:
        import torch

        torch.save(model.state_dict(), args.save)
        print(
            f"saved the masked state dict to {args.save}; reload it into a fresh "
            f"{args.model} with sparsity_lab.masks.load_state_dict(model, "
            f"torch.load({args.save!r}, weights_only=True)), or evaluate it with "
            f"sparsity-lab evaluate --model {args.model} --data {args.data} "
            f"--checkpoint {args.save}"
        )
    if args.json:
        record = {
            "model": args.model,
            "data": args.data,
            "method": args.method,
            "pattern": args.pattern,
            "budget": args.budget,
            "seed": args.seed,
            "dense_test_accuracy": dense["test_accuracy"],
            "dense_flags": dense["flags"],
            **result,
            "report": sl.report(model, pattern=pattern).to_dict(orient="records"),
        }
        _write_json(record, args.json)
    return 0


def _write_json(record: dict, path: str) -> None:
    import json

    text = json.dumps(record, indent=2, default=str) + "\n"
    if path == "-":
        print(text, end="")
    else:
        Path(path).write_text(text)
        print(f"wrote {path}")


def _load_saved(args: argparse.Namespace):
    """The task and the model saved at ``args.checkpoint`` (a state dict or safetensors)."""
    import torch

    from sparsity_lab import masks, recipes, saving

    path = Path(args.checkpoint)
    if not path.is_file():
        raise ValueError(f"--checkpoint {path}: no such file")
    t = recipes.task(args.model, args.data, seed=args.seed)
    model = t.build()
    try:
        if path.suffix == ".safetensors":
            saving.load_safetensors(model, path)
        else:
            masks.load_state_dict(model, torch.load(path, weights_only=True))
    except RuntimeError as err:
        raise ValueError(
            f"--checkpoint {path} does not fit a {args.model} for {args.data}: "
            f"{str(err).splitlines()[0]}"
        ) from err
    return t, model


def _evaluate(args: argparse.Namespace) -> int:
    import sparsity_lab as sl
    from sparsity_lab import recipes

    t, model = _load_saved(args)
    result = recipes.evaluate_run(model, t, split=args.split)
    line = (
        f"{args.model} on {args.data} from {args.checkpoint}: {args.split} accuracy "
        f"{result['accuracy']:.4f}, loss {result['loss']:.4f}, sparsity {result['sparsity']:.4f}"
    )
    if "perplexity" in result:
        line += f", perplexity {result['perplexity']:.3f}"
    print(line)
    if result["flags"]:
        print(f"warning: {result['flags']}")
    if args.json:
        record = {
            "model": args.model,
            "data": args.data,
            "checkpoint": args.checkpoint,
            "split": args.split,
            **result,
            "report": sl.report(model).to_dict(orient="records"),
        }
        _write_json(record, args.json)
    return 0


def _export(args: argparse.Namespace) -> int:
    from sparsity_lab import saving

    out = Path(args.out)
    if out.suffix not in (".onnx", ".safetensors"):
        raise ValueError(f"--out {out}: the suffix says the format, .onnx or .safetensors")
    if not out.resolve().parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.resolve().parent} does not exist")
    if args.shrink and out.suffix != ".onnx":
        raise ValueError("--shrink applies to ONNX exports only")
    if args.with_masks and out.suffix != ".safetensors":
        raise ValueError("--with-masks applies to safetensors files only")
    _, model = _load_saved(args)
    if out.suffix == ".safetensors":
        saving.save_safetensors(model, out, with_masks=args.with_masks)
        kept = "with its masks" if args.with_masks else "squashed (plain keys, pruned values)"
        print(f"wrote {out}, {kept}; load it with sparsity_lab.saving.load_safetensors")
    else:
        saving.export_onnx(model, out, shrink=args.shrink, external_data=False)
        print(f"wrote {out}" + (" (shrunk)" if args.shrink else " (squashed)"))
    return 0


def _recipe_defaults(
    sub: argparse.ArgumentParser, path: str, error: Callable[[str], None]
) -> dict[str, Any]:
    """The options of a YAML recipe file as defaults of subcommand ``sub``.

    Keys are the subcommand's option names (``finetune-epochs`` or ``finetune_epochs``);
    values are YAML scalars or lists, checked as the command line checks them; training
    methods' options go under ``options:`` as a mapping.  Read with ``yaml.safe_load``.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except OSError as err:
        error(f"--recipe {path}: {err.strerror}")
    except yaml.YAMLError as err:
        error(f"--recipe {path} is not valid YAML: {err}")
    if not isinstance(recipe, dict):
        error(f"--recipe {path} must be a mapping of option: value, got {type(recipe).__name__}")
    actions = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}
    allowed = sorted(d.replace("_", "-") for d in actions if d != "recipe")
    defaults: dict[str, Any] = {}
    for key, value in recipe.items():
        dest = str(key).replace("-", "_")
        if dest == "options" and "option" in actions:
            if not isinstance(value, dict):
                error(f"--recipe {path}: options must be a mapping, e.g. drop_fraction: 0.3")
            defaults["option"] = list(value.items())
            continue
        if dest not in actions or dest == "recipe":
            error(f"--recipe {path}: unknown option {key!r}; it accepts {', '.join(allowed)}")
        action = actions[dest]
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                error(f"--recipe {path}: {key} must be true or false, got {value!r}")
        elif action.nargs == "*":
            value = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif value is not None:
            try:
                value = action.type(str(value)) if action.type else str(value)
            except (argparse.ArgumentTypeError, ValueError) as err:
                error(f"--recipe {path}: {key}: {err}")
            if action.choices is not None and value not in action.choices:
                error(f"--recipe {path}: {key} must be one of {', '.join(action.choices)}")
        defaults[dest] = value
        action.required = False  # given by the recipe; the command line may still override
    return defaults


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``), or None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _option(text: str) -> tuple[str, object]:
    """``key=value`` with a Python literal value (``0.3``, ``[0.5, 0.9]``, ``True``) or a word."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"an option is key=value, e.g. drop_fraction=0.3 or sparsities=[0.5,0.9]; got {text!r}"
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain word such as rewind=step


def _train(args: argparse.Namespace) -> int:
    import sparsity_lab as sl
    from sparsity_lab import recipes
    from sparsity_lab.methods.base import TrainingFlops
    from sparsity_lab.methods.cram import one_shot

    # Build the method first: a misspelt name or a bad option fails before any training.
    cls = registry.get(args.method, "training")
    options = dict(args.option)
    accepted = cls.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {args.method!r}; it accepts "
            f"{', '.join(accepted)}"
        )
    method = cls(args.sparsity, pattern=args.pattern, budget=args.budget, seed=args.seed, **options)

    t = recipes.task(args.model, args.data, seed=args.seed)
    model = t.build()
    train, val, test = t.loaders()
    flops = TrainingFlops(method)
    history = method.fit(
        model,
        train,
        val,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        lr_schedule="cosine",
        seed=args.seed,
        progress=args.progress,
        callbacks=[flops],
    )
    # dense training for as many epochs: three forward passes per example
    dense_run = 3 * sl.report(model)["dense_flops"].iloc[-1] * len(train.dataset) * len(history)
    accuracy = sl.train.evaluate(model, test)["accuracy"]
    print(
        f"trained {args.model} on {args.data} with {args.method} ({method.pattern!r}, budget "
        f"{method.budget}) for {args.epochs} epoch(s): sparsity {sl.sparsity(model):.4f}, "
        f"test accuracy {accuracy:.4f}, training FLOPs {flops.total:.4g} "
        f"({flops.total / dense_run:.3f} x dense training)"
    )
    dense_member = getattr(method, "dense_model", None)
    if dense_member is not None:
        dense_accuracy = sl.train.evaluate(dense_member, test)["accuracy"]
        print(f"dense model of the pair: test accuracy {dense_accuracy:.4f}")
    if args.method in ("cram", "cram_plus"):
        # CrAM trains a dense model meant to be pruned once, without fine-tuning.
        one_shot(model, method.sparsity, data=train, pattern=method.pattern, budget=method.budget)
        accuracy = sl.train.evaluate(model, test)["accuracy"]
        print(
            f"one-shot pruned to sparsity {sl.sparsity(model):.4f} with BatchNorm "
            f"re-estimation: test accuracy {accuracy:.4f}"
        )
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(sl.report(model).to_string(index=False))
    if args.save:
        import torch

        torch.save(model.state_dict(), args.save)
        print(f"saved the masked state dict to {args.save}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sparsity_lab import bench, leaderboard

    config = bench.load_config(args.config)
    out = Path(args.out or Path(args.config).parent)
    # the table is written at the end: check the folder can take it before any run
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable; nothing was run")
    # read the reference first: it may be the very file this run is about to overwrite
    if args.compare and not Path(args.compare).is_file():
        raise ValueError(f"--compare {args.compare}: no such table; nothing was run")
    reference = bench.read(args.compare) if args.compare else None
    table = bench.run(
        config, executor_spec=args.executor, cache_dir=args.cache, progress=args.progress
    )
    csv_path, manifest_path = bench.write(table, config, out)
    pd.set_option("display.width", 200)
    summary = leaderboard.summary(table)[leaderboard.SUMMARY_COLUMNS]
    print(summary.round(4).to_string(index=False))
    print(f"wrote {csv_path} and {manifest_path}")
    if reference is not None:
        problems = bench.compare(table, reference)
        if problems:
            print(f"the table differs from {args.compare}:")
            print("\n".join(f"  {p}" for p in problems))
            return 1
        print(f"identical to {args.compare} (timings left out)")
    return 0


RECIPE_HELP = (
    "a YAML file of this command's options (e.g. method: magnitude, sparsity: 0.9, "
    "finetune-epochs: 2); flags given on the command line override it"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    from sparsity_lab import data, models

    parser = argparse.ArgumentParser(
        prog="sparsity-lab", description="Pruning and growth for efficient neural networks."
    )
    from sparsity_lab import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="print the registered methods, grouped by kind")
    p_list.add_argument("--kind", choices=registry.KINDS, help="only this kind")
    p_list.set_defaults(run=_list)

    p = sub.add_parser("prune", help="train (or load), prune, fine-tune and report")
    p.add_argument("--recipe", default=None, help=RECIPE_HELP)
    p.add_argument("--model", required=True, choices=models.available())
    p.add_argument("--data", required=True, choices=data.available())
    p.add_argument("--method", required=True, help="a criterion, e.g. magnitude or random")
    p.add_argument("--sparsity", type=_sparsity, default=None, help="fraction of zeros in [0, 1)")
    p.add_argument(
        "--pattern",
        default="unstructured",
        help=f"what is pruned together: {', '.join(registry.available('pattern'))} "
        f"(nm as 2:4, block as block:4x4, head as head:4)",
    )
    p.add_argument(
        "--budget",
        default=None,
        help=f"how zeros spread over layers: {', '.join(registry.available('budget'))} "
        f"(default: the criterion's, global for most)",
    )
    p.add_argument("--dense", nargs="*", default=[], help="weights kept dense, e.g. fc3.weight")
    p.add_argument("--exclude", nargs="*", default=[], help="weights left out of pruning")
    p.add_argument(
        "--epochs", type=int, default=None, help="dense training epochs (default: the recipe's)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="dense learning rate (default: the recipe's)"
    )
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--seed", type=_seed, default=0, help="seed of the split and the model")
    p.add_argument("--cache-dir", default=None, help="checkpoint cache (default ~/.cache)")
    p.add_argument("--no-cache", action="store_true", help="always train the dense model")
    p.add_argument("--save", default=None, help="write the pruned model's state dict here")
    p.add_argument("--json", default=None, help="write the results as JSON here ('-': stdout)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(run=_prune)

    e = sub.add_parser("evaluate", help="measure a saved model on its data's test split")
    x = sub.add_parser("export", help="write a saved model as safetensors or ONNX")
    for sp in (e, x):
        sp.add_argument("--model", required=True, choices=models.available())
        sp.add_argument("--data", required=True, choices=data.available())
        sp.add_argument(
            "--checkpoint", required=True, help="a state dict (--save) or .safetensors file"
        )
        sp.add_argument("--seed", type=_seed, default=0, help="seed of the split (default 0)")
    e.add_argument("--split", choices=["val", "test"], default="test")
    e.add_argument("--json", default=None, help="write the results as JSON here ('-': stdout)")
    e.set_defaults(run=_evaluate)
    x.add_argument("--out", required=True, help="model.onnx or model.safetensors")
    x.add_argument("--shrink", action="store_true", help="ONNX: remove pruned channels first")
    x.add_argument("--with-masks", action="store_true", help="safetensors: keep the masks")
    x.set_defaults(run=_export)

    t = sub.add_parser("train", help="train from scratch with a training-time method")
    # defaults: the benchmark's LeNet-300-100 on the MNIST subset, so that
    # ``sparsity-lab train --method rigl --sparsity 0.9 --budget erk`` runs as it stands
    t.add_argument("--recipe", default=None, help=RECIPE_HELP)
    t.add_argument("--model", default="lenet300", choices=models.available())
    t.add_argument("--data", default="mnist", choices=data.available())
    t.add_argument("--method", required=True, help="a training method, e.g. gmp, rigl, acdc")
    t.add_argument("--sparsity", type=_sparsity, default=None, help="fraction of zeros in [0, 1)")
    t.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, channel, ...")
    t.add_argument(
        "--budget", default=None, help="uniform, global, er, erk (default: the method's)"
    )
    t.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        help="a method option as key=value, repeatable (e.g. --option drop_fraction=0.3)",
    )
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--optimizer", default="sgd", help="sgd, adam or adamw")
    t.add_argument("--seed", type=_seed, default=0, help="seed of the split and the model")
    t.add_argument("--save", default=None, help="write the trained model's state dict here")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    t.set_defaults(run=_train)

    b = sub.add_parser("bench", help="run a benchmark config; write its table and manifest")
    b.add_argument("config", help="a benchmark's YAML file (see sparsity_lab.bench)")
    b.add_argument("--out", default=None, help="folder of the table (default: the config's)")
    b.add_argument(
        "--executor",
        default="serial",
        help="serial, local:N (a Dask LocalCluster of N workers) or a Dask scheduler "
        "address such as tcp://host:8786",
    )
    b.add_argument("--cache", default=".cache/bench", help="finished runs, reused on a rerun")
    b.add_argument(
        "--compare", default=None, help="a table to compare with (exit 1 if the runs differ)"
    )
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    b.set_defaults(run=_bench)
    parser.subcommands = sub.choices  # type: ignore[attr-defined]  # for --recipe
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sparsity-lab`` console script."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # A recipe's options become the defaults of its subcommand (read before parsing, so
    # that it can give the required ones); flags given on the command line override them.
    command = next((a for a in argv if not a.startswith("-")), None)
    recipe = _flag_value(argv, "--recipe")
    if recipe is not None and command in ("prune", "train"):
        sub = parser.subcommands[command]
        sub.set_defaults(**_recipe_defaults(sub, recipe, sub.error))
    args = parser.parse_args(argv)
    if args.command in ("prune", "train"):
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
        if args.epochs is not None and args.epochs < 1:
            parser.error(f"--epochs must be >= 1, got {args.epochs}")
        if args.command == "prune" and args.finetune_epochs < 0:
            parser.error(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
        # a whole run must never be lost to a path that cannot be written at its end
        if args.save:
            folder = Path(args.save).resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                parser.error(
                    f"--save {args.save}: the folder {folder} does not exist or is not "
                    "writable; create it first (nothing was trained)"
                )
    try:
        return args.run(args)
    except (KeyError, ValueError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        parser.error(str(message))
    return 2


if __name__ == "__main__":
    sys.exit(main())
