"""The `dogmacache` console command: one parser, one subcommand family per stage.

Each stage owns its subcommands in its own `cli.py` (`register(subparsers)`), so adding a command means
editing that stage's file and the `_STAGES` tuple below.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from dogmacache import __version__
from dogmacache.cache.storage import DISK_ERRNOS
from dogmacache.errors import DogmaError

# (module, what it adds) in the order `--help` lists them
_STAGES = (
    "dogmacache.cache.cli",
    "dogmacache.data_recipes.cli",
    "dogmacache.embed.cli",
    "dogmacache.train.cli",
    "dogmacache.demo.cli",
    "dogmacache.bench.cli",
    "dogmacache.explain.cli",
    "dogmacache.mutate.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dogmacache",
        description="Embed once with frozen foundation models into Zarr caches; train small bridges from them.",
    )
    parser.add_argument("--version", action="version", version=f"dogmacache {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _STAGES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# the disk's errors (`cache.storage.DISK_ERRNOS`) and a path in the way: what a file or folder a command reads or
# makes can meet
FILE_ERRNOS = {*DISK_ERRNOS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll here, or stdout is no file
        return False


def _file_error(args: argparse.Namespace, err: OSError) -> int:
    """A file or folder a command could not read or make (missing, no permission, read-only disk, a file in the way,
    full disk): the commands check their inputs and outputs ahead, so this is what none of them foresaw."""
    where = f" {err.filename}" if err.filename else ""
    print(
        f"dogmacache {args.command}: error: cannot read or write{where}: {err.strerror}; check the path and its "
        "permissions (an input you can read, an output folder you can write, space on its disk) and re-run",
        file=sys.stderr,
    )
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every stage's command line (matplotlib, torch): seconds
    except KeyboardInterrupt:
        print("dogmacache: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (DogmaError, FileNotFoundError) as err:
        if isinstance(err, FileNotFoundError) and err.errno is not None:  # the system's, not a message of ours
            return _file_error(args, err)
        # Library code raises these with messages that name the value, the expectation and the fix.
        print(f"dogmacache {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe (a child process's) is an error like any other
            raise
        # the reader of the output went away (`| head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit would raise again
        return 141
    except OSError as err:
        if err.errno not in FILE_ERRNOS:
            raise
        return _file_error(args, err)
    except KeyboardInterrupt:  # Ctrl-C: one line on what is left (a command may say it: set_defaults(interrupted=))
        kept = args.interrupted(args) if hasattr(args, "interrupted") else "re-run the same command to finish it"
        print(f"dogmacache {args.command}: interrupted; {kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
