"""Prefect settings every tnb process starts with, applied before prefect is imported.

- Analytics off: tnb makes no outbound connection except a hub download the user asked for.
- A local Prefect home under the project's runtime directory (``.tnb/prefect`` in the
  working directory), unless the user configured ``PREFECT_HOME`` themselves.
- A server started by tnb binds to 127.0.0.1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RUNTIME_DIR = Path(os.environ.get("TNB_RUNTIME_DIR", ".tnb")).absolute()

_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_HOME": str(RUNTIME_DIR / "prefect"),
    # the temporary server Prefect starts when no PREFECT_API_URL is set needs more than
    # the default 20 s on a busy 2-core machine (its first start migrates the database)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def configure() -> None:
    """Set tnb's Prefect defaults; analytics are forced off, the rest only if unset."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    for name, value in _DEFAULTS.items():
        os.environ.setdefault(name, value)
    # Prefect creates its home without parents and, failing, cannot open its database
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


configure()


def quiet_user_errors() -> None:
    """Log a :class:`tnb.errors.TnbError` from a task or flow as its one-line message.

    Prefect logs every task and flow failure with its traceback; for bad input the
    message already says what is wrong and what to do, and the CLI prints it once more
    as ``tnb: error: ...``. Other exceptions keep their tracebacks. Done in the record
    factory, because Prefect (re)configures its handlers when its server starts.
    """
    import logging

    from tnb.errors import TnbError

    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "tnb_one_line", False):
        return

    def one_line_user_errors(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], TnbError):
            record.exc_info, record.exc_text = None, None
        return record

    one_line_user_errors.tnb_one_line = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(one_line_user_errors)
    def not_a_user_error(record: logging.LogRecord) -> bool:
        # "Task run failed with exception: LakeError(...)", "Finished in state Failed('... LakeError: ...')":
        # the CLI prints that error once, as its `tnb: error:` line
        message = record.getMessage()
        if "Error" not in message:
            return True
        names = "|".join(sorted(_subclass_names(TnbError)))  # subclasses are defined as modules load
        return not re.search(rf"\b({names})(\(|:)", message)

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logging.getLogger(name).addFilter(not_a_user_error)


def _subclass_names(base: type) -> set[str]:
    names = {base.__name__}
    sub: type
    for sub in base.__subclasses__():
        names |= _subclass_names(sub)
    return names
