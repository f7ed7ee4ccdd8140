"""``tnb run``, ``tnb bicluster`` and ``tnb server``: the orchestrated commands.

``tnb.cli`` calls :func:`register` to add them. Which Prefect API a command talks to
(:func:`prefect_api`):

1. ``PREFECT_API_URL`` when set (a server you run, or Prefect Cloud);
2. else the server ``tnb server`` runs (it leaves a marker, ``tnb-server.json``, in tnb's
   ``PREFECT_HOME``: host, port, pid), so the runs appear in its UI. A server tnb did not
   start (another project's on 127.0.0.1:4200, say) is never used unless
   ``PREFECT_API_URL`` points at it;
3. else one temporary server for the whole command, shared by the Dask workers, stopped
   at exit. Prefect would otherwise start a temporary server lazily in *every* process
   that runs a task, each Dask worker included (measured here: 3 servers and 93 s for a
   4-task Dask flow, against 1 server and ~20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import _env

STARTUP_TIMEOUT_S = 180  # a 2-core machine under load needs 10-30 s; Prefect's default 20 s is too tight
UI_HOST, UI_PORT = "127.0.0.1", 4200


def _marker() -> Path:
    return Path(os.environ["PREFECT_HOME"]) / "tnb-server.json"


def tnb_server_url() -> str | None:
    """The base URL of the running ``tnb server`` (from its marker), or ``None``."""
    import json

    from tnb.lake import pid_alive

    try:
        marker = json.loads(_marker().read_text())
        host, port, pid = str(marker["host"]), int(marker["port"]), int(marker["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid):
        return None
    url = f"http://{host}:{port}"
    return url if _healthy(f"{url}/api") else None


def _healthy(api_url: str, timeout: float = 0.5) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _api_url_set(api_url: str) -> Iterator[str]:
    """Point this process and every process it starts (Dask workers) at ``api_url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def prefect_api(quiet: bool = False) -> Iterator[str]:
    """The Prefect API for one command: configured, local UI server, or one temporary server.

    Yields
    ------
    str
        The API URL every flow and task of the command reports to.
    """
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect does not create parents
    from prefect.settings import PREFECT_API_URL

    configured = os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()
    if configured:
        with _api_url_set(configured) as url:
            yield url
        return
    ours = tnb_server_url()
    if ours is not None:
        if not quiet:
            print(f"tnb: reporting to the Prefect server of `tnb server` at {ours} (open it to watch the run)")
        with _api_url_set(f"{ours}/api") as url:
            yield url
        return
    if not quiet and _healthy(f"http://{UI_HOST}:{UI_PORT}/api"):
        print(f"tnb: a Prefect server that `tnb server` did not start answers at http://{UI_HOST}:{UI_PORT}; "
              f"not reporting to it (export PREFECT_API_URL=http://{UI_HOST}:{UI_PORT}/api to do so)")
    from prefect.server.api.server import SubprocessASGIServer

    if not quiet:
        print("tnb: starting a temporary Prefect server for this run (`tnb server` keeps one running, with a UI)")
    server = SubprocessASGIServer()
    server.start(timeout=STARTUP_TIMEOUT_S)
    if server.server_process is not None:
        die_with_us(server.server_process.pid)
    try:
        with _api_url_set(server.api_url) as url:
            try:
                yield url
            finally:
                _flush_logs()
    finally:
        server.stop()


_WATCHDOG = """
import os, signal, sys, time
parent, child = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
while alive(parent) and alive(child):
    time.sleep(0.5)
if alive(child):
    os.kill(child, signal.SIGTERM)
    for _ in range(20):
        time.sleep(0.25)
        if not alive(child):
            break
    else:
        os.kill(child, signal.SIGKILL)
"""


def die_with_us(child_pid: int) -> subprocess.Popen:
    """Stop process ``child_pid`` when this process dies, even by ``kill -9``.

    A small watchdog process polls both; when this one is gone it sends the child
    SIGTERM, then SIGKILL. (A temporary Prefect server would otherwise be left
    running, orphaned, after the command that started it was killed.)
    """
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(child_pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _flush_logs() -> None:
    """Send queued run logs before the temporary server stops (else they are lost, with a warning)."""
    from prefect.logging.handlers import APILogHandler

    with contextlib.suppress(Exception):
        APILogHandler().flush()


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _add_bicluster_args(parser: argparse.ArgumentParser) -> None:
    from tnb.params import INPUTS, METHODS, NULLS, SELECTION_RULES, STATISTICS, BiclusterParams

    defaults = BiclusterParams()
    group = parser.add_argument_group("biclustering")
    group.add_argument("--method", choices=METHODS, default=defaults.method, help="(default: %(default)s)")
    group.add_argument("--grid", type=int, nargs="+", default=None, metavar="K",
                       help="row and column ks at once (default: 6 9 12)")
    group.add_argument("--row-ks", type=int, nargs="+", default=None, metavar="K", help="token-cluster counts")
    group.add_argument("--col-ks", type=int, nargs="+", default=None, metavar="K", help="neuron-cluster counts")
    group.add_argument("--input", choices=INPUTS, default=defaults.input,
                       help="cluster the study's |z| per neuron or the signed z (default: %(default)s)")
    group.add_argument("--null", choices=NULLS, default=defaults.null,
                       help="null of z and p; each draw refits the whole grid (default: %(default)s)")
    group.add_argument("--n-null", type=int, default=defaults.n_null,
                       help="null draws; p >= 1/(n_null+1) (default: %(default)s)")
    group.add_argument("--statistic", choices=STATISTICS, default=defaults.statistic,
                       help="what z and p test (default: %(default)s)")
    group.add_argument("--n-seeds", type=int, default=defaults.n_seeds,
                       help="fits with different seeds behind `stability` (default: %(default)s)")
    group.add_argument("--n-shuffles", type=int, default=defaults.n_shuffles,
                       help="label shuffles behind z_shuffle, fitted vs shuffled labels (default: %(default)s)")
    group.add_argument("--selection", choices=SELECTION_RULES, default=defaults.selection,
                       help="rule picking each layer's grid point (default: %(default)s; 'r2' is the study's)")
    group.add_argument("--alpha", type=float, default=defaults.alpha,
                       help="significance level of p_layer (default: %(default)s)")
    group.add_argument("--min-stability", type=float, default=defaults.min_stability,
                       help="stability (mean pairwise ARI) a finding needs (default: %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    group.add_argument("--drop-first", type=int, default=defaults.drop_first,
                       help="leave the first N positions of every sequence out of the matrix (default: %(default)s)")
    where = parser.add_argument_group("where the bicluster tasks run")
    where.add_argument("--dask-address", default=None, metavar="ADDR",
                       help="scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    where.add_argument("--workers", type=int, default=None, help="local Dask workers (default: one per core)")
    where.add_argument("--serial", action="store_true", help="no Dask: one layer at a time in this process")
    where.add_argument("--null-chunk", type=int, default=25,
                       help="null draws per Dask task (default: %(default)s)")


_PARAM_NAMES = (
    "method", "row_ks", "col_ks", "input", "null", "n_null", "statistic", "n_seeds", "n_shuffles", "selection",
    "alpha", "min_stability", "seed", "drop_first",
)


def _bicluster_kwargs(args: argparse.Namespace) -> dict:
    """The flows' keyword arguments: ``bicluster`` (the stage's parameters) and where tasks run."""
    grid = args.grid or [6, 9, 12]
    values = {name: getattr(args, name, None) for name in _PARAM_NAMES}
    values["row_ks"] = tuple(args.row_ks or grid)
    values["col_ks"] = tuple(args.col_ks or grid)
    return {
        "bicluster": values,
        "dask_address": args.dask_address,
        "n_workers": args.workers,
        "serial": args.serial,
        "null_chunk_size": args.null_chunk,
    }


def _check_params(kwargs: dict) -> None:
    """Validate before any server or cluster starts (errors print as one line)."""
    from tnb.bicluster_stage import BiclusterParams

    params = BiclusterParams.from_mapping(kwargs["bicluster"])
    params.null_chunks(kwargs["null_chunk_size"])
    if kwargs.get("dask_address"):
        check_dask_address(kwargs["dask_address"])


def check_dask_address(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing answers at a Dask scheduler address."""
    import socket
    from urllib.parse import urlsplit

    from tnb.errors import TnbError

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


def _check_stage_inputs(args: argparse.Namespace, models: list[str], kwargs: dict) -> None:
    """What a stage of ``tnb run`` would find wrong inside the flow, found before any server starts.

    The grid against each model's width (the extract stage makes the activations), else
    against the activations in the lake; the metrics and the report directory when only
    the analyze stage runs. Bad input thus prints one line and no Prefect log.
    """
    from tnb.bicluster_stage import BiclusterParams, check_grid_fits, layer_partitions
    from tnb.errors import LakeError
    from tnb.lake import Lake
    from tnb.models import architecture, load_config, resolve_model, untrained_twin
    from tnb.params import StageError

    params = BiclusterParams.from_mapping(kwargs["bicluster"])
    stages = set(args.stages)
    specs = [resolve_model(model) for model in models]
    if "bicluster" in stages and "extract" in stages:
        for spec in specs:
            arch = architecture(load_config(spec))
            for site in args.sites:
                width = arch.width(site)
                if width <= max(params.col_ks):
                    raise StageError(f"{spec.name} {site} has {width} neurons; the grid needs more than "
                                   f"{max(params.col_ks)} (col_ks={params.col_ks})")
        n_sequences = -(-args.max_tokens // args.seq_len)
        if args.max_tokens - params.drop_first * n_sequences <= max(params.row_ks):
            raise StageError(f"--max-tokens {args.max_tokens} leaves too few tokens for the grid: it needs more than "
                           f"{max(params.row_ks)} after drop_first={params.drop_first} (row_ks={params.row_ks})")
    elif "bicluster" in stages:
        if not Path(args.lake).expanduser().is_dir():
            raise LakeError(f"no lake at {Path(args.lake).absolute()}; check --lake, or run the extract stage too")
        lake = Lake(args.lake, read_only=True)
        twins = (False, True) if args.control else (False,)
        names = [untrained_twin(spec, params.seed).name if twin else spec.name for spec in specs for twin in twins]
        for partition in layer_partitions(lake, names, args.sites, args.layers):
            check_grid_fits(lake, *partition, params)
    if "analyze" in stages and "bicluster" not in stages and args.report_dir:
        from tnb.report import check_report_inputs

        site = args.sites[0] if len(args.sites) == 1 else None
        check_report_inputs(args.lake, args.report_dir, site=site, method=params.method, drop_first=params.drop_first)


def _cmd_run(args: argparse.Namespace) -> int:
    from tnb.cli import _preflight

    models = args.model or ["minilm"]
    for model in models:
        _preflight(argparse.Namespace(**{**vars(args), "model": model}))
    kwargs = _bicluster_kwargs(args)
    _check_params(kwargs)
    _check_stage_inputs(args, models, kwargs)
    start = time.perf_counter()
    with prefect_api():
        from .pipeline import pipeline_flow

        outcome = pipeline_flow(
            lake=args.lake, models=models, corpus=args.corpus, hub_config=args.corpus_config, max_tokens=args.max_tokens,
            seq_len=args.seq_len, sites=args.sites, layers=args.layers, batch_size=args.batch_size,
            text_column=args.text_column, max_documents=args.max_documents, report_dir=args.report_dir,
            stages=args.stages, overwrite=args.overwrite, control=args.control, add_bos=args.bos, **kwargs,
        )
    stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in outcome["seconds"].items())
    print(f"tnb run: done in {time.perf_counter() - start:.1f}s ({stages}); lake: {Path(args.lake).absolute()}")
    if "analyze" in outcome:
        print(f"report: {outcome['analyze']['html']}")
    return 0


def _cmd_bicluster(args: argparse.Namespace) -> int:
    from tnb.bicluster_stage import BiclusterParams, check_grid_fits, is_done, layer_partitions
    from tnb.errors import LakeError
    from tnb.lake import Lake

    if not Path(args.lake).expanduser().is_dir():
        raise LakeError(f"no lake at {Path(args.lake).absolute()}; check --lake (`tnb extract` makes one)")
    lake = Lake(args.lake)
    kwargs = _bicluster_kwargs(args)
    _check_params(kwargs)
    # bad input fails here, as one line, before any server or cluster starts
    params = BiclusterParams.from_mapping(kwargs["bicluster"])
    for partition in layer_partitions(lake, args.model, args.sites, args.layers):
        check_grid_fits(lake, *partition, params)
        if not args.overwrite:
            is_done(lake, *partition, params)
    with prefect_api():
        from .bicluster import bicluster_flow

        outcomes = bicluster_flow(
            lake=args.lake, models=args.model, sites=args.sites, layers=args.layers, overwrite=args.overwrite, **kwargs
        )
    written = sum(o["status"] == "written" for o in outcomes)
    stale = sum(o.get("reason") == "stale" for o in outcomes)
    redone = f" ({stale} of them stale: their activations changed)" if stale else ""
    print(f"tnb bicluster: {written} partitions written{redone}, {len(outcomes) - written} already complete")
    return 0


def server_command(host: str = UI_HOST, port: int = UI_PORT) -> list[str]:
    """The command ``tnb server`` runs (documented in the README)."""
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    return [prefect, "server", "start", "--host", host, "--port", str(port), "--analytics-off"]


def _write_marker(host: str, port: int, pid: int) -> None:
    """Say where ``tnb server`` listens, so that tnb's other commands find it (and nothing else)."""
    import json

    staged = _marker().with_suffix(".tmp")
    staged.write_text(json.dumps({"host": host, "port": port, "pid": pid}))
    staged.replace(_marker())


def _cmd_server(args: argparse.Namespace) -> int:
    import signal

    _env.configure()
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # The UI talks to this server's own API (Prefect's UI would follow PREFECT_API_URL, or port 4200).
    api_url = f"http://{args.host}:{args.port}/api"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_API_URL=api_url,
               PREFECT_SERVER_API_HOST=args.host, PREFECT_SERVER_API_PORT=str(args.port))
    command = server_command(args.host, args.port)
    print(f"tnb: {' '.join(command)}  (analytics off; PREFECT_HOME={env['PREFECT_HOME']})")
    print(f"tnb: UI at http://{args.host}:{args.port}; `tnb run` in another shell reports to it automatically")
    server = subprocess.Popen(command, env=env)
    die_with_us(server.pid)
    _write_marker(args.host, args.port, server.pid)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(OSError):
            _marker().unlink()
        if server.poll() is None:  # stop the server with us, whatever stopped us
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``run``, ``bicluster`` and ``server`` to the ``tnb`` command line."""
    from tnb.cli import _positive_int, add_corpus_args
    from tnb.models import PRESETS, SITES

    run = subparsers.add_parser("run", help="the whole study: extract -> bicluster -> report, orchestrated by Prefect")
    add_corpus_args(run)
    run.add_argument("--model", action="append", default=None, metavar="NAME_OR_PATH",
                     help=f"{', '.join(PRESETS)}, a model directory or a hub id; repeatable (default: minilm)")
    run.add_argument("--sites", nargs="+", choices=SITES, default=["resid"], help="(default: resid)")
    run.add_argument("--layers", type=int, nargs="+", default=None, help="layer numbers (default: all)")
    run.add_argument("--batch-size", type=_positive_int, default=16, help="sequences per forward pass")
    run.add_argument("--report-dir", default="report", help="where the report goes (default: %(default)s)")
    run.add_argument("--no-control", dest="control", action="store_false",
                     help="skip each model's untrained twin (<model>-untrained, run by default as the control)")
    run.add_argument("--bos", action="store_true",
                     help="put the tokenizer's BOS before every sequence where it puts none (GPT-2: <|endoftext|>)")
    run.add_argument("--stages", nargs="+", choices=("extract", "bicluster", "analyze"),
                     default=["extract", "bicluster", "analyze"], help="run only these stages")
    _add_bicluster_args(run)
    run.set_defaults(func=_cmd_run)

    bicluster = subparsers.add_parser("bicluster", help="bicluster the activations already in the lake")
    bicluster.add_argument("--lake", default="lake", help="lake root directory (default: %(default)s)")
    bicluster.add_argument("--model", action="append", default=None, help="model name(s) in the lake (default: all)")
    bicluster.add_argument("--sites", nargs="+", choices=SITES, default=None, help="(default: all in the lake)")
    bicluster.add_argument("--layers", type=int, nargs="+", default=None, help="(default: all in the lake)")
    bicluster.add_argument("--overwrite", action="store_true", help="redo partitions that are already complete")
    _add_bicluster_args(bicluster)
    bicluster.set_defaults(func=_cmd_bicluster)

    server = subparsers.add_parser("server", help="start a Prefect server with its UI on 127.0.0.1 (analytics off)")
    server.add_argument("--host", default=UI_HOST, help="(default: %(default)s)")
    server.add_argument("--port", type=int, default=UI_PORT, help="(default: %(default)s)")
    server.set_defaults(func=_cmd_server)
