"""`dogmacache train --config FILE` (also under `torchrun`), `train import-checkpoint`, `model-summary`, and
`probe` (linear probes per cache, `train/probe.py`)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a task's model (and its baselines) from caches; metrics, figures, "
        "checkpoints; `train import-checkpoint` converts the CDT authors' weights",
    )
    p.add_argument("--config", help="TOML or YAML with `task` and [data], [model], [train], [output]")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one key, e.g. --set train.epochs=5 (value parsed as JSON, else a string). train.num_workers "
        "(input workers) and train.threads (torch threads) left unset are decided from the cores this process may use "
        "(CPU affinity, cgroup quota) less those other processes kept busy over 0.1 s (under torchrun the processes "
        "of a machine split its cores instead): on the CPU 0 workers up to 2 "
        "cores, 1 for 3-8, 2 above, threads the cores they leave; on a GPU 1-2 threads and at most 4 workers; "
        "OMP_NUM_THREADS, when set, gives the threads",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--example-config", action="store_true", help="print every key with its default and exit")
    p.add_argument("--task", default="cdt", help="with --example-config: which task's keys (default cdt)")
    p.add_argument(
        "--seeds",
        default=None,
        help="run the configuration once per seed (e.g. 0,1,2 or 0-4) into <dir>/seed<k>; "
        "<dir>/seeds.json holds mean, sd and range of every metric",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_train, interrupted=_interrupted)
    sub = p.add_subparsers(dest="train_command", metavar="ACTION")
    imp = sub.add_parser(
        "import-checkpoint",
        help="convert a state dict of the CDT authors' CDTv33Model into a "
        "dogmacache checkpoint (load_model, evaluation, explain)",
    )
    imp.add_argument("src", help="their .pt file: a state dict, or one under `model_state_dict` / `state_dict`")
    imp.add_argument("dest", help="the checkpoint to write")
    imp.add_argument("--from", dest="source", required=True, choices=("cdt-authors",), help="whose weights")
    imp.add_argument(
        "--dna-positions",
        type=int,
        default=896,
        help="DNA positions per window (no weight depends on it; the paper's Enformer windows: 896)",
    )
    imp.add_argument("--heads", type=int, default=8, help="attention heads (not in the weights; paper 8)")
    imp.add_argument("--dropout", type=float, default=0.3, help="dropout, for further training (paper 0.3)")
    imp.set_defaults(run=_import)

    from dogmacache.train.tasks.cdt import summary

    summary.register(subparsers)
    register_probe(subparsers)


def register_probe(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe",
        help="which cache (model, layer) predicts a target best: split-aware linear probes per cache beside "
        "permuted-label, shuffled-input and k-mer controls; probe.tsv, probe.json, probe.png",
    )
    p.add_argument("--caches", required=True, help="comma-separated caches (paths or URLs), one probe each")
    p.add_argument("--labels", required=True, help="labelled table (parquet, or .tsv): item id, split, target")
    p.add_argument("--target", required=True, help="the label column to predict")
    p.add_argument("--out", required=True, help="folder for probe.tsv, probe.json and probe.png")
    p.add_argument("--id-column", default="id", help="the labels' column holding each row's cache id (default id)")
    p.add_argument(
        "--group-column",
        help="the labels' column of the unit kept within one cross-validation fold and one split, e.g. the gene of "
        "several TSS windows (default: --id-column)",
    )
    p.add_argument("--split-column", default="split", help="the labels' train/validation/test column (default split)")
    p.add_argument(
        "--pooling",
        default="mean",
        help="over the positions of per-position caches: mean (default), or center (the middle one or two positions)",
    )
    p.add_argument(
        "--task",
        default="auto",
        help="ridge (regression) or logistic regression (classification); auto (default): classification when the "
        "target has two values",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over the train rows (default 5)")
    p.add_argument("--seed", type=int, default=0, help="the controls' permutations and the folds")
    p.add_argument(
        "--positive",
        help="a two-valued target's positive class (AUPRC is scored for it); needed unless the values are 0/1 or "
        "booleans, where 1 / True is",
    )
    p.set_defaults(run=_probe)


def _train(args: argparse.Namespace) -> int:
    from dogmacache.errors import InputError
    from dogmacache.train.config import parse_overrides
    from dogmacache.train.registry import example_config, load_config

    if args.example_config:
        print(example_config(args.task), end="")
        return 0
    if not args.config:
        raise InputError("--config FILE is needed (see --example-config for every key and its default)")
    config = load_config(args.config, parse_overrides(args.set))
    if args.print_config:  # TOML, which --config reads back to the same configuration
        from dogmacache.train.config import to_toml

        print(to_toml(config), end="")
        return 0
    from dogmacache.train.run import run_training, setup_distributed

    distributed = setup_distributed()
    try:
        if args.seeds is not None:
            from dogmacache.train.seeds import parse_seeds, run_seeds

            run_seeds(config, parse_seeds(args.seeds), progress=not args.no_progress)
        else:
            run_training(config, progress=not args.no_progress)
    finally:
        if distributed:
            import torch

            torch.distributed.destroy_process_group()
    return 0


def _probe(args: argparse.Namespace) -> int:
    from dogmacache.train.probe import ProbeConfig, run_probe

    caches = tuple(c.strip() for c in args.caches.split(",") if c.strip())
    keys = ("labels", "target", "out", "id_column", "group_column", "split_column", "pooling", "task", "seed", "folds")
    keys += ("positive",)
    run_probe(ProbeConfig(caches=caches, **{k: getattr(args, k) for k in keys}))
    return 0


def _interrupted(args: argparse.Namespace) -> str:
    """What a Ctrl-C during training keeps: every finished epoch's checkpoint (`<model>_last.pt`)."""
    where, resume = "the run's [output] dir", None
    if args.config:
        try:
            from dogmacache.train.config import parse_overrides
            from dogmacache.train.registry import load_config

            output = load_config(args.config, parse_overrides(args.set)).output
            where, resume = output.dir, output.resume
        except Exception:  # the message must not fail: the config was read once already
            pass
    if getattr(args, "seeds", None) is not None:
        where = f"{where}/seed<k> for each seed begun"
    how = {
        True: "re-run the same command to continue from it",
        False: "re-run with --set output.resume=true to continue from it (as it stands the command starts over)",
    }.get(resume, "re-run the same command with output.resume = true to continue from it")
    return f"each model's last finished epoch is kept in {where} (<model>_last.pt); {how}"


def _import(args: argparse.Namespace) -> int:
    from dogmacache.train.tasks.cdt.authors import import_authors_checkpoint

    result = import_authors_checkpoint(
        args.src, args.dest, n_heads=args.heads, dropout=args.dropout, dna_positions=args.dna_positions
    )
    print(
        f"wrote {result['checkpoint']}: CDT with {result['n_parameters']:,} parameters "
        f"({json.dumps(result['model_config'])})"
    )
    return 0
