"""The ``tnb`` command line (``tnb ...`` and ``python -m tnb ...``), every subcommand in one place.

The study's options are generated from its parameters (:mod:`tnb.params`): option
``--max-tokens`` is field ``CorpusParams.max_tokens``, with that field's default and help
text (:func:`add_params`), and the parsed options become one :class:`tnb.params.Study`
(:func:`study_from_args`), validated once, which the flows take whole.

Errors a user can act on print as one line, ``tnb: error: ...`` (exit status 2), also when
they are raised inside a Prefect flow (:func:`main`). Only the standard library and the
light parts of ``tnb`` are imported here: ``tnb --help`` starts fast, and each command
imports what it runs. The Prefect side (which server a command reports to, ``tnb server``)
is ``flows/cli.py``, imported only by the commands that start a flow.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tnb import __version__
from tnb.allocator import ALLOCATORS, process_allocator
from tnb.errors import TnbError
from tnb.models import PRESETS, SITES
from tnb.params import BiclusterParams, ComputeParams, CorpusParams, ExtractParams, Study
from tnb.query_params import PARAMS

__all__ = [
    "add_params",
    "build_parser",
    "check_dask_address",
    "flows_module",
    "flows_package",
    "main",
    "params_from_args",
    "study_from_args",
]

DEFAULT_LAKE = Study.lake
DEFAULT_MODEL = ExtractParams.models[0]


# ----------------------------------------------------------------------------- options from the parameters
def option_name(field: dataclasses.Field) -> str:
    """The option of a parameter: ``--max-tokens`` for ``max_tokens`` unless it names its own (``--corpus``)."""
    if field.metadata.get("option"):
        return str(field.metadata["option"])
    default_on = field.type == "bool" and field.default is True
    return f"--{'no-' if default_on else ''}{field.name.replace('_', '-')}"


def _shown(field: dataclasses.Field) -> str:
    if "shown" in field.metadata:
        return str(field.metadata["shown"])
    value = field.default
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    return "none" if value is None else str(value)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a parameters class that are command-line options (those with a help text)."""
    return [field for field in dataclasses.fields(cls) if field.metadata.get("help")]


def add_params(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    section: str = "",
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> None:
    """Add one option per field of ``cls`` (a :mod:`tnb.params` dataclass): its name, type, choices, help, default.

    Every option's argparse default is ``None`` (not given), so that the dataclass's own
    default applies when the parameters are built (:func:`params_from_args`): defaults
    live in one place. ``section`` prefixes the option's ``dest`` (``corpus.max_tokens``).
    """
    wanted = None if only is None else set(only)
    for field in cli_fields(cls):
        if (wanted is not None and field.name not in wanted) or field.name in set(exclude):
            continue
        kind = str(field.type)
        names = [option_name(field), *field.metadata.get("aliases", ())]
        text = str(field.metadata["help"]).replace("%", "%%")
        options: dict[str, Any] = {"dest": f"{section}.{field.name}" if section else field.name, "default": None}
        if kind == "bool":
            if field.default is True:
                options.update(action="store_const", const=False, help=f"turn off: {text}")
            else:
                options.update(action="store_const", const=True, help=text)
        else:
            scalar = int if "int" in kind else float if "float" in kind else str
            options.update(type=scalar, help=f"{text} (default: {_shown(field).replace('%', '%%')})")
            metavar = names[0].lstrip("-").replace("-", "_").upper()
            if kind.startswith("tuple["):
                options.update(nargs="+", action="extend")
                metavar = metavar.removesuffix("S")
            if "choices" in field.metadata:
                options["choices"] = field.metadata["choices"]
            else:
                options["metavar"] = metavar
        parser.add_argument(*names, **options)


def params_from_args(args: argparse.Namespace, cls: type, section: str = "") -> dict[str, Any]:
    """The fields of ``cls`` given on the command line (lists as tuples); the rest keep their defaults."""
    values = {}
    for field in cli_fields(cls):
        value = getattr(args, f"{section}.{field.name}" if section else field.name, None)
        if value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def study_from_args(args: argparse.Namespace) -> Study:
    """The :class:`~tnb.params.Study` the options describe, validated (a bad value raises its one-line error)."""
    bicluster = params_from_args(args, BiclusterParams, "bicluster")
    grid = getattr(args, "grid", None)
    if grid:  # --grid K...: row and column ks at once; --row-ks / --col-ks win
        bicluster.setdefault("row_ks", tuple(grid))
        bicluster.setdefault("col_ks", tuple(grid))
    return Study(
        corpus=CorpusParams(**params_from_args(args, CorpusParams, "corpus")),
        extract=ExtractParams(**params_from_args(args, ExtractParams, "extract")),
        bicluster=BiclusterParams(**bicluster),
        compute=ComputeParams(**params_from_args(args, ComputeParams, "compute")),
        **params_from_args(args, Study),
    )


def _add_bicluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("biclustering (the bicluster stage's parameters)")
    group.add_argument("--grid", type=int, nargs="+", default=None, metavar="K",
                       help="row and column ks at once (default: 6 9 12)")
    add_params(group, BiclusterParams, "bicluster")
    add_params(parser.add_argument_group("where the bicluster tasks run"), ComputeParams, "compute")


# ----------------------------------------------------------------------------- checks before any flow starts
def check_dask_address(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing answers at a Dask scheduler address."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("tcp", "tls") or not host or not port:
        raise TnbError(f"--dask-address should look like tcp://HOST:PORT. Got {address!r} instead.")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        raise TnbError(
            f"no Dask scheduler answers at {address} ({error.strerror or error}); start one "
            "(dask scheduler) or leave out --dask-address for a local cluster"
        ) from None


def _preflight(study: Study, model: str, sites: Sequence[str] | None = None, layers: Sequence[int] | None = None,
               add_bos: bool = False) -> None:
    """Check what can be checked before a flow starts (model, positions, layers, weights, a local corpus,
    a ``models`` row on another stream), so bad input never reaches Prefect and leaves the lake as it was."""
    from tnb.extract import preflight
    from tnb.lake import Lake
    from tnb.models import resolve_model

    corpus = study.corpus
    preflight(
        Lake(study.lake), resolve_model(model), corpus.source, corpus.config, corpus.max_tokens, corpus.seq_len,
        sites, list(layers) if layers is not None else None, study.overwrite, corpus.text_column,
        corpus.max_documents, add_bos,
    )


def _check_stage_inputs(study: Study) -> None:
    """What a stage of ``tnb run`` would find wrong inside the flow, found before any server starts.

    The grid against each model's width (the extract stage makes the activations), else
    against the activations in the lake; the metrics and the report directory when only
    the analyze stage runs. Bad input thus prints one line and no Prefect log.
    """
    from tnb.bicluster_stage import check_grid_fits, layer_partitions
    from tnb.errors import LakeError
    from tnb.lake import Lake
    from tnb.models import architecture, load_config, resolve_model, untrained_twin
    from tnb.params import StageError

    params, extract, stages = study.bicluster, study.extract, set(study.stages)
    specs = [resolve_model(model) for model in extract.models]
    layers = list(extract.layers) if extract.layers is not None else None
    if "bicluster" in stages and "extract" in stages:
        for spec in specs:
            arch = architecture(load_config(spec))
            for site in extract.sites:
                width = arch.width(site)
                if width <= max(params.col_ks):
                    raise StageError(f"{spec.name} {site} has {width} neurons; the grid needs more than "
                                     f"{max(params.col_ks)} (col_ks={params.col_ks})")
        max_tokens, seq_len = study.corpus.max_tokens, study.corpus.seq_len
        n_sequences = -(-max_tokens // seq_len)
        if max_tokens - params.drop_first * n_sequences <= max(params.row_ks):
            raise StageError(f"--max-tokens {max_tokens} leaves too few tokens for the grid: it needs more than "
                             f"{max(params.row_ks)} after drop_first={params.drop_first} (row_ks={params.row_ks})")
    elif "bicluster" in stages:
        if not Path(study.lake).expanduser().is_dir():
            raise LakeError(f"no lake at {Path(study.lake).absolute()}; check --lake, or run the extract stage too")
        lake = Lake(study.lake, read_only=True)
        twins = (False, True) if extract.control else (False,)
        names = [untrained_twin(spec, params.seed).name if twin else spec.name for spec in specs for twin in twins]
        for partition in layer_partitions(lake, names, list(extract.sites), layers):
            check_grid_fits(lake, *partition, params)
    if "analyze" in stages and "bicluster" not in stages and study.report_dir:
        from tnb.report import check_report_inputs

        report_site = extract.sites[0] if len(extract.sites) == 1 else None
        check_report_inputs(study.lake, study.report_dir, site=report_site, method=params.method,
                            drop_first=params.drop_first)


def _check_compute(study: Study) -> None:
    study.bicluster.null_chunks(study.compute.null_chunk_size)
    if study.compute.dask_address:
        check_dask_address(study.compute.dask_address)


# ----------------------------------------------------------------------------- the Prefect flows (lazy)
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


@contextlib.contextmanager
def _prefect() -> Iterator[None]:
    """Where a command's flows run: its Prefect server, with a terminal that shows tnb's lines, not Prefect's."""
    prefect_cli = flows_module("cli")
    with prefect_cli.cli_console(), prefect_cli.prefect_api():
        yield


# ----------------------------------------------------------------------------- commands
def _cmd_ingest(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    _preflight(study, args.model)
    with _prefect():  # the server the user runs (UI), else one temporary server
        stream = flows_module("extract").tokenize_flow(study=study, model=args.model)
    print(f"tokens: {os.path.join(study.lake, 'tokens', 'stream=' + stream)}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    _preflight(study, args.model, study.extract.sites, study.extract.layers, study.extract.add_bos)
    with _prefect():
        result = flows_module("extract").extract_flow(
            study=study, model=args.model, untrained=args.untrained, twin_seed=args.twin_seed
        )
    print(
        f"{result['model']}: stream {result['stream']}, {len(result['written'])} partitions written, "
        f"{len(result['skipped'])} already complete (malloc: {process_allocator()})"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    study = study_from_args(args)
    for model in study.extract.models:
        _preflight(study, model, study.extract.sites, study.extract.layers, study.extract.add_bos)
    _check_compute(study)
    _check_stage_inputs(study)
    start = time.perf_counter()
    with _prefect():
        outcome = flows_module("pipeline").pipeline_flow(study=study)
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in outcome["seconds"].items())
    # (the analyze flow has printed "report: <path>" already, in the terminal and in the run's log)
    print(f"tnb run: done in {time.perf_counter() - start:.1f}s ({stages}); lake: {Path(study.lake).absolute()}; "
          f"malloc: {process_allocator()}")
    return 0


def _cmd_bicluster(args: argparse.Namespace) -> int:
    from tnb.bicluster_stage import check_grid_fits, is_done, layer_partitions
    from tnb.errors import LakeError
    from tnb.lake import Lake

    study = study_from_args(args)
    if not Path(study.lake).expanduser().is_dir():
        raise LakeError(f"no lake at {Path(study.lake).absolute()}; check --lake (`tnb extract` makes one)")
    lake = Lake(study.lake)
    _check_compute(study)
    # bad input fails here, as one line, before any server or cluster starts
    for partition in layer_partitions(lake, args.models, args.sites, args.layers):
        check_grid_fits(lake, *partition, study.bicluster)
        if not study.overwrite:
            is_done(lake, *partition, study.bicluster)
    compute = study.compute
    with _prefect():
        outcomes = flows_module("bicluster").bicluster_flow(
            lake=study.lake, models=args.models, sites=args.sites, layers=args.layers,
            bicluster=study.bicluster.config(), overwrite=study.overwrite, dask_address=compute.dask_address,
            n_workers=compute.n_workers, serial=compute.serial, null_chunk_size=compute.null_chunk_size,
        )
    written = sum(o["status"] == "written" for o in outcomes)
    stale = sum(o.get("reason") == "stale" for o in outcomes)
    redone = f" ({stale} of them stale: their activations changed)" if stale else ""
    print(f"tnb bicluster: {written} partitions written{redone}, {len(outcomes) - written} already complete")
    return 0


def _cmd_server(args: argparse.Namespace) -> int:
    return int(flows_module("cli").serve(args.host, args.port))


def _cmd_query(args: argparse.Namespace) -> int:
    from tnb.query import parse_param, run_query, write_result  # lazy: polars, not for --help

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
            args.lake, args.out, site=args.report_site, method=args.method, drop_first=args.drop_first,
            top_n=args.top_n,
        )
    except OSError as error:  # a figure on a full or read-only disk
        raise ReportError(f"cannot write the report to {args.out}: {error.strerror or error}") from None
    if earlier:
        print(f"report: replaced the earlier report in {args.out}")
    print(f"report: {result.html}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from tnb.verify import _cmd_verify as run  # lazy: numpy, pyarrow and polars are not for --help

    return run(args)


# ----------------------------------------------------------------------------- the parser
class _Parser(argparse.ArgumentParser):
    """Usage errors print as one line, like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tnb: error: {self.prog.removeprefix('tnb ').strip()}: {message} (see --help)\n")


def _command(
    commands: argparse._SubParsersAction, name: str, func: Any, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in ``tnb --help``, ``summary`` and ``description`` in its own ``--help``."""
    parser = commands.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}")
    parser.set_defaults(func=func)
    return parser


def _add_lake(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", type=Path, default=Path(DEFAULT_LAKE), help="lake root directory (default: %(default)s)")


def _add_allocator(group: Any) -> None:
    group.add_argument(
        "--allocator", choices=ALLOCATORS, default="auto",
        help="the process's malloc: auto starts the command over, once, under jemalloc where one is installed, "
             "so that extraction's peak memory stays that of one batch (under glibc's malloc it grows with the "
             "tokens); jemalloc: that, or an error; system: as started (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tnb", description="Token-neuron biclustering of transformer activations.")
    parser.add_argument("--version", action="version", version=f"tnb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = f"{', '.join(PRESETS)}, a model directory or a hub id"

    run = _command(commands, "run", _cmd_run, "the whole study: extract -> bicluster -> report, orchestrated by Prefect",
                   "Every stage skips what the lake already holds, so a re-run after a crash does only what is "
                   "missing; a partition whose inputs changed is redone.")
    add_params(run, Study, only=("lake", "report_dir", "stages", "overwrite", "progress"))
    add_params(run.add_argument_group("corpus"), CorpusParams, "corpus")
    group = run.add_argument_group("models and extraction")
    add_params(group, ExtractParams, "extract")
    _add_allocator(group)
    _add_bicluster_options(run)

    ingest = _command(commands, "ingest", _cmd_ingest, "corpus -> token stream in the lake",
                      "Reads the corpus and writes its token stream for one tokenizer, once.")
    add_params(ingest, Study, only=("lake", "overwrite"))
    ingest.add_argument("--model", default=DEFAULT_MODEL, help=f"whose tokenizer: {models} (default: %(default)s)")
    add_params(ingest.add_argument_group("corpus"), CorpusParams, "corpus")

    extract = _command(commands, "extract", _cmd_extract, "token stream -> per-layer activations in the lake",
                       "Tokenizes the corpus (once per tokenizer) and writes one activations partition per "
                       "(site, layer) of one model; complete partitions are skipped.")
    add_params(extract, Study, only=("lake", "overwrite", "progress"))
    extract.add_argument("--model", default=DEFAULT_MODEL, help=f"{models} (default: %(default)s)")
    add_params(extract.add_argument_group("corpus"), CorpusParams, "corpus")
    group = extract.add_argument_group("extraction")
    add_params(group, ExtractParams, "extract", exclude=("models", "control"))
    group.add_argument("--untrained", action="store_true",
                       help="extract the model's untrained twin instead, stored as <model>-untrained")
    group.add_argument("--twin-seed", type=int, default=0, help="torch seed of the twin's weights (default: %(default)s)")
    _add_allocator(group)

    bicluster = _command(commands, "bicluster", _cmd_bicluster, "bicluster the activations already in the lake",
                         "One task per (model, site, layer), run on a local Dask cluster (or --serial, or "
                         "--dask-address); each writes its labels and metrics, with its null.")
    add_params(bicluster, Study, only=("lake", "overwrite"))
    bicluster.add_argument("--model", "--models", dest="models", nargs="+", action="extend", default=None,
                           help="model name(s) in the lake (default: all)")
    bicluster.add_argument("--sites", "--site", nargs="+", action="extend", choices=SITES, default=None,
                           help="(default: all in the lake)")
    bicluster.add_argument("--layers", type=int, nargs="+", action="extend", default=None,
                           help="(default: all in the lake)")
    _add_bicluster_options(bicluster)

    query = _command(
        commands, "query", _cmd_query, "run a query from sql/ (or a .sql file, or an inline SELECT) against a lake",
        "Tables: tokens, models, labels, metrics (lazy scans of the lake), params (one row of --param values), "
        "activation_cells (one layer, long form, content positions; needs model, site, layer) and special_positions "
        "(where each model was fed special tokens such as [CLS]). Polars SQL can also read any file or "
        "URL the user can (read_csv('/path')); --lake-only refuses that. "
        f"Parameters: {', '.join(sorted(PARAMS))}. NAME=all means no filter.",
    )
    _add_lake(query)
    query.add_argument("query", help="a name in sql/ (top_tokens), a .sql file, or a quoted SELECT statement")
    query.add_argument("--format", choices=("table", "csv", "parquet"), default="table",
                       help="output format (default: %(default)s)")
    query.add_argument("--out", type=Path, default=None, help="write to this file instead of stdout (default: stdout)")
    query.add_argument("--lake-only", action="store_true",
                       help="refuse SQL that reads files or URLs (read_csv(...) and kin): for statements from an "
                            "untrusted source")
    query.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                       help="bind a parameter (repeatable): model=gpt2 (default: none)")

    report = _command(commands, "report", _cmd_report, "write the HTML and Markdown report of a lake",
                      "Verdicts per layer first (significant? stable? beyond the untrained twin?), then the figures, "
                      "each against its null, the clusters' top tokens and the circuit families.")
    _add_lake(report)
    report.add_argument("--out", type=Path, default=Path("report"),
                        help="output directory: index.html, report.md, figures (default: %(default)s)")
    report.add_argument("--site", dest="report_site", choices=SITES, default=None,
                        help="only this site (default: all)")
    report.add_argument("--method", default=None, help="only this method (default: all)")
    report.add_argument("--drop-first", type=int, default=0,
                        help="the drop_first partition to describe (default: %(default)s)")
    report.add_argument("--top-n", type=int, default=8, help="top tokens shown per cluster (default: %(default)s)")

    verify = _command(commands, "verify", _cmd_verify, "hash every lake partition; report (and --repair) what is broken",
                      "Checks every partition against its manifest (sha256, rows) and the inputs it was computed "
                      "from; exit status 2 when something is corrupt, incomplete or stale.")
    _add_lake(verify)
    verify.add_argument("--repair", action="store_true",
                        help="recompute corrupt and stale partitions (remove what cannot be recomputed)")

    server = _command(commands, "server", _cmd_server, "start a Prefect server with its UI on 127.0.0.1 (analytics off)",
                      "`tnb run` and the other commands in another shell report to it and show in its UI.")
    server.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    server.add_argument("--port", type=int, default=4200, help="(default: %(default)s)")
    return parser


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` of the command line: ``tnb: warning: ...``, one line, no source line."""
    # not print(): inside a flow with log_prints, Prefect turns print() into an INFO log record
    (file or sys.stderr).write(f"tnb: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``tnb`` command; its exit status (2: an error a user can act on, printed as one line).

    ``argv`` None: this process's command line, and ``tnb run`` / ``tnb extract`` may start the
    process over under jemalloc (``--allocator``, :func:`tnb.allocator.use_jemalloc`). Called
    from Python with ``argv`` given, it never replaces the calling process: ``--allocator`` is
    then the caller's business."""
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if argv is None and getattr(args, "allocator", "system") != "system":
            from tnb.allocator import use_jemalloc

            use_jemalloc(args.allocator)  # this command line again, under jemalloc (once), where one is installed
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return int(args.func(args) or 0)
    except TnbError as error:
        print(f"tnb: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tnb: interrupted; complete partitions are kept, re-run to finish", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
