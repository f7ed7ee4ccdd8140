"""The Prefect side of the ``tnb`` command line: which server a command reports to, and ``tnb server``.

``tnb.cli`` (the command line itself) imports this module only when a command starts a
flow; nothing here imports ``tnb.cli``. Which Prefect API a command talks to
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

import contextlib
import os
import shutil
import subprocess
import sys
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


@contextlib.contextmanager
def cli_console() -> Iterator[None]:
    """The terminal of a ``tnb`` command: the flows' own messages, warnings and errors, not Prefect's run chatter.

    Prefect's console handler prints every INFO record ("Beginning flow run", "View at",
    "Finished in state", "Stopping temporary server"), so an error a user can act on came
    after 7-12 such lines. For the command's duration, in this process:

    - Prefect's console handlers drop records below WARNING;
    - what the flows and tasks of ``flows/`` ``print`` (``log_prints``: progress, "N partitions
      written") goes to stdout as plain lines;

    and processes started meanwhile (Dask workers) get ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=WARNING``.
    Every record still reaches the Prefect server (its API handler is untouched): the UI has
    the whole log. A :class:`tnb.errors.TnbError` is then printed once, by ``tnb.cli.main``.
    """
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect's handlers first: setting them up later would replace ours

    def warnings_and_up(record: logging.LogRecord) -> bool:
        # "Finished in state NotReady('Upstream task run ... did not reach a COMPLETED state')": the
        # upstream task's own error says what went wrong (and a user error is printed once, by tnb.cli)
        return record.levelno >= logging.WARNING and "Finished in state NotReady(" not in record.getMessage()

    here = Path(__file__).resolve().parent

    def from_the_flows(record: logging.LogRecord) -> bool:
        # what flows/*.py print (log_prints: Prefect logs it with the caller's file) or log below WARNING
        return record.levelno < logging.WARNING and Path(record.pathname).resolve().parent == here

    consoles = {
        handler
        for logger in [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
        for handler in getattr(logger, "handlers", ())
        if isinstance(handler, PrefectConsoleHandler)
    }
    messages = logging.StreamHandler(sys.stdout)
    messages.addFilter(from_the_flows)
    messages.setFormatter(logging.Formatter("%(message)s"))
    run_loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for handler in consoles:
        handler.addFilter(warnings_and_up)
    for logger in run_loggers:
        logger.addHandler(messages)
    previous = os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL")
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    try:
        yield
    finally:
        for handler in consoles:
            handler.removeFilter(warnings_and_up)
        for logger in run_loggers:
            logger.removeHandler(messages)
        if previous is None:
            os.environ.pop("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", None)
        else:
            os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = previous


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


def serve(host: str = UI_HOST, port: int = UI_PORT) -> int:
    """``tnb server``: run a Prefect server with its UI until interrupted; its exit status."""
    import signal

    _env.configure()
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # The UI talks to this server's own API (Prefect's UI would follow PREFECT_API_URL, or port 4200).
    api_url = f"http://{host}:{port}/api"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_API_URL=api_url,
               PREFECT_SERVER_API_HOST=host, PREFECT_SERVER_API_PORT=str(port))
    command = server_command(host, port)
    print(f"tnb: {' '.join(command)}  (analytics off; PREFECT_HOME={env['PREFECT_HOME']})")
    print(f"tnb: UI at http://{host}:{port}; `tnb run` in another shell reports to it automatically")
    server = subprocess.Popen(command, env=env)
    die_with_us(server.pid)
    _write_marker(host, port, server.pid)

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
