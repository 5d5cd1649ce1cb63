"""`dogmacache recipe NAME --out DIR [--source-dir DIR] [options]`: one sub-command per recipe.

A recipe module has `SOURCES` (the public files it reads), `add_arguments(parser)` for its own options and
`run(args) -> dict` (the manifest it wrote). Adding a recipe = one module + one line in `RECIPES`.
"""

from __future__ import annotations

import argparse
import importlib

from dogmacache.cache.storage import check_writable

RECIPES = {
    "demo": "dogmacache.data_recipes.demo",
    "gasperini": "dogmacache.data_recipes.gasperini",
    "gene_tss": "dogmacache.data_recipes.gene_tss",
    "gtex": "dogmacache.data_recipes.gtex",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipe", help="turn public source files into the tables embed and train read")
    sub = parser.add_subparsers(dest="recipe", metavar="NAME", required=True)
    for name, module_name in RECIPES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--out", required=True, help="output folder for the tables and recipe.json")
        if module.SOURCES:  # a recipe that downloads (gene_tss reads the files named by its own options)
            p.add_argument("--source-dir", default=None, help="folder that already holds the source files")
            p.add_argument("--cache-dir", default=None, help="where downloads go (default ~/.cache/dogmacache/sources)")
        p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
        if name != "demo":
            p.add_argument(
                "--test-chroms",
                default="",
                help="comma-separated chromosomes, named as the recipe's items are (e.g. chr8,chr9), whose items "
                "form the test split (the rest drawn into train and validation; genes linked across both sides "
                "by a shared protein left out, counted): no test window then shares sequence with a training one "
                "(default: none, a split by item)",
            )
        module.add_arguments(p)
        p.set_defaults(run=_exit_code(module.run))


def _exit_code(recipe_run):
    """Recipes return their manifest (tests read it); the command line wants an exit code."""

    def run(args: argparse.Namespace) -> int:
        if getattr(args, "out", None):
            check_writable(args.out, "--out", "nothing was read or written")
        recipe_run(args)
        return 0

    return run
