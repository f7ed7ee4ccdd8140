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
