"""The ``tnb`` command line. Errors a user can act on print as one line (exit status 2)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from tnb import __version__
from tnb.errors import TnbError
from tnb.models import PRESETS, SITES

DEFAULT_LAKE = "lake"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"should be >= 1, got {value}")
    return value


def add_corpus_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that builds a token stream."""
    parser.add_argument("--lake", default=DEFAULT_LAKE, help="lake root directory (default: %(default)s)")
    parser.add_argument(
        "--corpus",
        default=None,
        help="local .parquet/.jsonl/.txt file or directory, or a hub dataset id; default: the bundled Wikipedia sample",
    )
    parser.add_argument("--corpus-config", default=None, help="hub dataset config, e.g. 20231101.en")
    parser.add_argument("--text-column", default="text", help="column holding the text (default: %(default)s)")
    parser.add_argument("--max-documents", type=_positive_int, default=None, help="read at most N documents")
    parser.add_argument("--max-tokens", type=_positive_int, default=20_000, help="token positions (default: %(default)s)")
    parser.add_argument("--seq-len", type=_positive_int, default=128, help="sequence length (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="redo partitions that are already complete")


def _preflight(args: argparse.Namespace) -> None:
    """Check what can be checked before a flow starts, so bad input never reaches Prefect."""
    from tnb.extract import preflight
    from tnb.lake import Lake
    from tnb.models import resolve_model

    if args.seq_len > args.max_tokens:
        raise TnbError(f"--seq-len should be <= --max-tokens={args.max_tokens}. Got {args.seq_len} instead.")
    if args.corpus_config and not args.corpus:
        raise TnbError("--corpus-config needs --corpus (a hub dataset id such as wikimedia/wikipedia)")
    # model, positions, layers, weights, a local corpus, a models row on another stream: before any write
    preflight(
        Lake(args.lake), resolve_model(args.model), args.corpus, args.corpus_config, args.max_tokens, args.seq_len,
        getattr(args, "site", None) or getattr(args, "sites", None), getattr(args, "layers", None), args.overwrite,
        args.text_column, args.max_documents, getattr(args, "bos", False),
    )


def flows_package() -> str:
    """The import name of the Prefect flows: ``tnb.flows`` when installed, ``flows`` in a checkout.

    A wheel installs the repository's top-level ``flows/`` as ``tnb.flows`` (no generic
    top-level name in site-packages). A checkout on ``sys.path`` imports it as ``flows``,
    which is what its tests and benchmarks import too; an editable install that does not
    put the checkout on ``sys.path`` maps ``tnb.flows`` to it.
    """
    here = Path(__file__).resolve().parent
    if (here / "flows" / "__init__.py").is_file():
        return "tnb.flows"
    spec = importlib.util.find_spec("flows")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == here.parent / "flows" / "__init__.py":
        return "flows"
    return "tnb.flows"


def flows_module(name: str) -> ModuleType:
    """Import one module of the Prefect flows (``cli``, ``extract``, ...): see :func:`flows_package`."""
    return importlib.import_module(f"{flows_package()}.{name}")


def _stream_options(args: argparse.Namespace) -> dict:
    """The options every command that builds a token stream passes on to its flow."""
    return {
        "lake": args.lake,
        "model": args.model,
        "corpus": args.corpus,
        "hub_config": args.corpus_config,
        "max_tokens": args.max_tokens,
        "seq_len": args.seq_len,
        "text_column": args.text_column,
        "max_documents": args.max_documents,
        "overwrite": args.overwrite,
    }


def _cmd_ingest(args: argparse.Namespace) -> int:
    _preflight(args)
    prefect_api = flows_module("cli").prefect_api
    tokenize_flow = flows_module("extract").tokenize_flow

    with prefect_api():  # the server the user runs (UI), else one temporary server
        stream = tokenize_flow(**_stream_options(args))
    print(f"tokens: {os.path.join(args.lake, 'tokens', 'stream=' + stream)}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    _preflight(args)
    prefect_api = flows_module("cli").prefect_api
    extract_flow = flows_module("extract").extract_flow

    with prefect_api():  # the server the user runs (UI), else one temporary server
        result = extract_flow(
            **_stream_options(args),
            sites=tuple(args.site),
            layers=args.layers,
            batch_size=args.batch_size,
            dtype=args.dtype,
            untrained=args.untrained,
            twin_seed=args.twin_seed,
            add_bos=args.bos,
        )
    print(
        f"{result['model']}: stream {result['stream']}, {len(result['written'])} partitions written, "
        f"{len(result['skipped'])} already complete"
    )
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors print as one line, like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tnb: error: {self.prog.removeprefix('tnb ').strip()}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tnb", description="Token-neuron biclustering of transformer activations.")
    parser.add_argument("--version", action="version", version=f"tnb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="corpus -> token stream in the lake")
    add_corpus_args(ingest)
    ingest.add_argument("--model", default="minilm", help=f"whose tokenizer to use: {', '.join(PRESETS)} or a path")
    ingest.set_defaults(func=_cmd_ingest)

    extract = commands.add_parser("extract", help="token stream -> per-layer activations in the lake")
    add_corpus_args(extract)
    extract.add_argument("--model", default="minilm", help=f"{', '.join(PRESETS)}, a model directory or a hub id")
    extract.add_argument(
        "--site", "--sites", dest="site", nargs="+", action="extend", choices=SITES,
        help="resid (default) and/or mlp: --site resid --site mlp, or --sites resid mlp",
    )
    extract.add_argument("--layers", type=int, nargs="+", default=None, help="layer numbers (default: all)")
    extract.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per forward pass")
    extract.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored precision")
    extract.add_argument("--untrained", action="store_true",
                         help="extract the model's untrained twin instead, stored as <model>-untrained")
    extract.add_argument("--twin-seed", type=int, default=0, help="torch seed of the twin's weights (default: %(default)s)")
    extract.add_argument("--bos", action="store_true",
                         help="put the tokenizer's BOS before every sequence where it puts none (GPT-2: <|endoftext|>)")
    extract.set_defaults(func=_cmd_extract)

    for module_name in (f"{flows_package()}.cli", "tnb.analysis_cli", "tnb.verify_cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name not in (module_name, module_name.rpartition(".")[0]):  # the package itself is absent
                raise
            continue
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "site", "unset") is None:
        args.site = ["resid"]
    try:
        return int(args.func(args) or 0)
    except TnbError as error:
        print(f"tnb: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tnb: interrupted; complete partitions are kept, re-run to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
