"""Prefect artifacts of a tnb run: keys named by the lake, progress bars that move, figures inline.

Artifacts decorate the Prefect UI; a failure to publish one is logged, never fatal to a run.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import cast
from uuid import UUID

logger = logging.getLogger("tnb.flows")

__all__ = ["Progress", "artifact_prefix", "inline_png"]


def artifact_prefix(lake: str) -> str:
    """``tnb-<lake name>-<hash of its absolute path>``: runs on different lakes do not overwrite each other's artifacts.

    Prefect artifact keys allow lowercase letters, digits and dashes only.
    """
    root = Path(lake).absolute()
    name = re.sub(r"[^a-z0-9]+", "-", root.name.lower()).strip("-")[:24] or "lake"
    return f"tnb-{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def inline_png(path: str | Path, alt: str) -> str:
    """Markdown for a PNG embedded as a data URI: the Prefect UI shows it (a ``file://`` link it would not open)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"


class Progress:
    """A Prefect progress artifact (0-100%) that moves as a stage's work is done.

    ``advance`` may be called often: the artifact is updated at most every ``interval``
    seconds, and always when the work is complete.
    """

    def __init__(self, key: str, description: str, total: int, interval: float = 2.0) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.interval = max(int(total), 1), 0, interval
        self.values: list[float] = []  # every value published, in order
        self._last = time.monotonic()  # the creation published 0%
        self._id: UUID | None = None
        try:
            # called from sync code, Prefect's sync-compatible function returns the id itself
            self._id = cast(UUID, create_progress_artifact(0.0, key=key, description=description))
            self.values.append(0.0)
        except Exception as error:  # a UI decoration: the run goes on without it
            logger.warning("progress artifact %s not created: %s", key, error)

    def set(self, done: int) -> None:
        """Record ``done`` units of work (of ``total``) and publish when due."""
        self.done = min(int(done), self.total)
        now = time.monotonic()
        if self._id is None or (self.done < self.total and now - self._last < self.interval):
            return
        from prefect.artifacts import update_progress_artifact

        value = round(100.0 * self.done / self.total, 1)
        try:
            update_progress_artifact(self._id, value)
        except Exception as error:  # a UI decoration: the run goes on without it
            logger.warning("progress artifact not updated: %s", error)
            return
        self.values.append(value)
        self._last = now

    def advance(self, units: int = 1) -> None:
        self.set(self.done + units)
