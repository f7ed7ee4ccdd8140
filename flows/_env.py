"""Prefect settings every tnb process starts with, applied before prefect is imported.

- Analytics off: tnb makes no outbound connection except a hub download the user asked for.
- A local Prefect home under the project's runtime directory (``.tnb/prefect`` in the
  working directory), unless the user configured ``PREFECT_HOME`` themselves.
- A server started by tnb binds to 127.0.0.1.
"""

from __future__ import annotations

import os
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
