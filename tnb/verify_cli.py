"""``tnb verify`` on the command line; the work is in :mod:`tnb.verify`, imported only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_verify(args: argparse.Namespace) -> int:
    from tnb.verify import _cmd_verify as run  # lazy: numpy, pyarrow and polars are not for --help

    return run(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``verify`` to the ``tnb`` command line."""
    verify = subparsers.add_parser("verify", help="hash every lake partition; report (and --repair) what is broken")
    verify.add_argument("--lake", type=Path, default=Path("lake"), help="lake root directory (default: %(default)s)")
    verify.add_argument("--repair", action="store_true",
                        help="recompute corrupt and stale partitions (remove what cannot be recomputed)")
    verify.set_defaults(func=_cmd_verify)
