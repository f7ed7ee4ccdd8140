"""``tnb query`` and ``tnb report``: the analysis subcommands (registered by ``tnb.cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tnb.query_params import PARAMS


def _cmd_query(args: argparse.Namespace) -> int:
    from tnb.query import parse_param, run_query, write_result  # lazy: polars and pyarrow, not for --help

    params = dict(parse_param(text) for text in args.param or [])
    frame = run_query(args.lake, args.query, params, lake_only=args.lake_only)
    text = write_result(frame, args.format, args.out)
    if text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        print(f"{frame.height} rows -> {args.out}", file=sys.stderr)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tnb.report import ReportError, write_report

    earlier = (args.out / "index.html").is_file() or (args.out / "report.md").is_file()
    try:
        result = write_report(
            args.lake,
            args.out,
            site=args.report_site,
            method=args.method,
            drop_first=args.drop_first,
            top_n=args.top_n,
        )
    except OSError as error:  # a figure on a full or read-only disk
        raise ReportError(f"cannot write the report to {args.out}: {error.strerror or error}") from None
    if earlier:
        print(f"report: replaced the earlier report in {args.out}")
    print(f"report: {result.html}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``query`` and ``report`` to the ``tnb`` command's subparsers."""
    query = subparsers.add_parser(
        "query",
        help="run a query from sql/ (or a .sql file, or an inline SELECT) against a lake",
        description=(
            "Tables: tokens, models, labels, metrics (lazy scans of the lake), params (one row of "
            "--param values), activation_cells (one layer, long form, content positions; needs model, site, layer) "
            "and special_positions (where each model was fed special tokens such as [CLS]). "
            "Polars SQL can also read any file or URL the user can (read_csv('/path')); --lake-only refuses that. "
            f"Parameters: {', '.join(sorted(PARAMS))}. NAME=all means no filter."
        ),
    )
    query.add_argument("--lake", type=Path, default=Path("lake"), help="lake root directory (default: %(default)s)")
    query.add_argument("query", help="a name in sql/ (top_tokens), a .sql file, or a quoted SELECT statement")
    query.add_argument("--format", choices=("table", "csv", "parquet"), default="table",
                       help="output format (default: %(default)s)")
    query.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout")
    query.add_argument(
        "--lake-only", action="store_true",
        help="refuse SQL that reads files or URLs (read_csv(...) and kin): for statements from an untrusted source",
    )
    query.add_argument(
        "--param", "-p", action="append", metavar="NAME=VALUE", help="bind a parameter (repeatable): model=gpt2"
    )
    query.set_defaults(func=_cmd_query)

    report = subparsers.add_parser(
        "report", help="write the HTML and Markdown report of a lake",
        description="Verdicts per layer first (significant? stable? beyond the untrained twin?), then the figures, "
                    "each against its null, the clusters' top tokens and the circuit families.",
    )
    report.add_argument("--lake", type=Path, default=Path("lake"), help="lake root directory (default: %(default)s)")
    report.add_argument("--out", type=Path, default=Path("report"),
                        help="output directory: index.html, report.md, figures (default: %(default)s)")
    report.add_argument("--site", dest="report_site", default=None, help="only this site (default: all)")
    report.add_argument("--method", default=None, help="only this method (default: all)")
    report.add_argument("--drop-first", type=int, default=0, help="the drop_first partition to describe (default: %(default)s)")
    report.add_argument("--top-n", type=int, default=8, help="top tokens shown per cluster (default: %(default)s)")
    report.set_defaults(func=_cmd_report)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``query``/``report`` without the rest of the CLI (``python -m tnb.analysis_cli``)."""
    from tnb.errors import TnbError

    parser = argparse.ArgumentParser(prog="tnb")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TnbError as error:
        print(f"tnb: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
