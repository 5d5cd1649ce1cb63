"""`dogmacache train --config FILE` (also under `torchrun`) and `dogmacache model-summary`."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train CDT (and its baselines) from caches; metrics, figures, checkpoints")
    p.add_argument("--config", help="TOML or YAML with [data], [model], [train], [output]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one key, e.g. --set train.epochs=5 (value parsed as JSON, else a string)")  # fmt: skip
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--example-config", action="store_true", help="print every key with its default and exit")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=_train)

    from dogmacache.train import summary

    summary.register(subparsers)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _train(args: argparse.Namespace) -> int:
    from dogmacache.errors import InputError
    from dogmacache.train.config import example_config, load_config

    if args.example_config:
        print(example_config(), end="")
        return 0
    if not args.config:
        raise InputError("--config FILE is needed (see --example-config for every key and its default)")
    overrides = {}
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.epochs=5")
        key, value = item.split("=", 1)
        overrides[key] = _value(value)
    config = load_config(args.config, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from dogmacache.train.run import run_training, setup_distributed

    distributed = setup_distributed()
    try:
        run_training(config, progress=not args.no_progress)
    finally:
        if distributed:
            import torch

            torch.distributed.destroy_process_group()
    return 0
