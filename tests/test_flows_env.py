"""What every tnb process sets before Prefect runs: analytics off, a home that exists,
and user errors logged as one line."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import flows  # noqa: F401  (applies tnb's Prefect settings)
from flows import _env
from tnb.errors import ModelError


def test_analytics_off_and_home_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "true")
    _env.configure()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert home.is_dir()


def _record(error: Exception) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tnb.tests.flows_env")  # the record factory is global
    handler = Keep()
    logger.addHandler(handler)
    try:
        try:
            raise error
        except Exception:
            logger.error("Task run failed with exception: %r", error, exc_info=True)
    finally:
        logger.removeHandler(handler)
    return records[0]


def test_user_errors_are_logged_without_traceback() -> None:
    record = _record(ModelError("layer 9 is out of range"))
    assert record.exc_info is None
    assert "layer 9 is out of range" in record.getMessage()


def test_other_errors_keep_their_traceback() -> None:
    record = _record(ValueError("a bug"))
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


@pytest.mark.slow
def test_tnb_server_on_another_port_is_found_and_its_ui_talks_to_it(tmp_path: Path) -> None:
    """`tnb server --port N`: its UI's API is port N (not 4200, not PREFECT_API_URL), tnb finds it by its marker."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TNB_RUNTIME_DIR=str(tmp_path), PYTHONPATH=str(root),
               PREFECT_API_URL="http://127.0.0.1:4200/api")  # what the UI must not follow
    env.pop("PREFECT_HOME", None)
    server = subprocess.Popen([sys.executable, "-m", "tnb", "server", "--port", str(port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("tnb server did not come up in 180 s")
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=5).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        marker = json.loads((tmp_path / "prefect" / "tnb-server.json").read_text())
        assert marker["port"] == port
        probe_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        found = subprocess.run(
            [sys.executable, "-c", "from flows import _env; _env.configure(); from flows.cli import tnb_server_url; "
                                   "print(tnb_server_url())"],
            env=probe_env, cwd=root, capture_output=True, text=True, timeout=120, check=True,
        )
        assert found.stdout.strip() == f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert not (tmp_path / "prefect" / "tnb-server.json").exists()  # gone with the server
