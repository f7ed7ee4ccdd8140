"""Which malloc a process runs on, and jemalloc for the commands that extract.

Under glibc's malloc the forward pass's transients fragment the heap over the first
batches of an extraction, so its peak memory grows with the number of batches (bench/README:
tnb's peak above the GPT-2 model +101 and +214 MB from 5,000 to 80,000 tokens, in two
runs). Under jemalloc, which serves freed memory again from size classes, every batch peaks
at the same level (+18 MB over the same range) and extraction is no slower. The allocator is
fixed when a process starts (``LD_PRELOAD``), so ``tnb run`` and ``tnb extract`` start over,
once, under jemalloc where one is installed (:func:`use_jemalloc`: the same process id, the
same arguments), and put ``LD_PRELOAD`` back as it was at once, so that what they start in
turn (Dask workers, a Prefect server) runs on the allocator the user chose.

jemalloc runs with :data:`JEMALLOC_CONF`: it never hands freed pages back by itself (the
ones a forward pass frees are the next one's); extraction purges them when it ends
(:func:`purge_jemalloc`). Everything here is Linux-only and does nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from tnb.errors import TnbError

__all__ = [
    "ALLOCATORS",
    "JEMALLOC_CONF",
    "find_jemalloc",
    "libc",
    "preload_environ",
    "process_allocator",
    "purge_jemalloc",
    "restore_environ",
    "use_jemalloc",
]

#: ``--allocator`` of ``tnb run`` and ``tnb extract``: jemalloc where installed, jemalloc or an error, glibc's.
ALLOCATORS = ("auto", "jemalloc", "system")
#: jemalloc's settings: no separate arena for large blocks (they are reused like the rest),
#: freed pages kept for reuse, never purged in the background (the fastest of four settings
#: tried: bench/README, eighth session).
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: Set for the process that starts over under jemalloc: ``LD_PRELOAD`` and ``MALLOC_CONF`` as
#: they were (JSON; null: unset), for :func:`restore_environ`.
SAVED = "TNB_ALLOCATOR_SAVED"
_PRELOADED = ("LD_PRELOAD", "MALLOC_CONF")
_ARENAS_ALL = 4096  # jemalloc 5's MALLCTL_ARENAS_ALL: "arena.4096.purge" purges every arena


def find_jemalloc() -> str | None:
    """jemalloc's shared library as ``LD_PRELOAD`` takes it (``libjemalloc.so.2``), or None."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("jemalloc")


@functools.lru_cache(maxsize=1)
def _process() -> Any:
    return ctypes.CDLL(None)  # the process's symbols, first definition in load order


@functools.lru_cache(maxsize=1)
def libc() -> Any:
    """The C library (``find_library`` runs ``ldconfig``: once per process), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def process_allocator() -> str:
    """``"glibc"``, ``"jemalloc"`` or ``"other"``: whose ``malloc`` this process calls (fixed when it started)."""
    process, c = _process(), libc()
    if c is not None and hasattr(c, "gnu_get_libc_version"):  # glibc, not another C library
        if ctypes.cast(process.malloc, ctypes.c_void_p).value == ctypes.cast(c.malloc, ctypes.c_void_p).value:
            return "glibc"
    # jemalloc's own entry point, exported unprefixed by the distributions' builds
    return "jemalloc" if hasattr(process, "mallctl") else "other"


def purge_jemalloc() -> bool:
    """Hand jemalloc's free pages back to the system (True), or do nothing where it is not the process's malloc."""
    if process_allocator() != "jemalloc":
        return False
    name = f"arena.{_ARENAS_ALL}.purge".encode()
    return _process().mallctl(name, None, None, None, ctypes.c_size_t(0)) == 0


def preload_environ(environ: Mapping[str, str], library: str) -> dict[str, str]:
    """``environ`` for a process that starts on ``library`` (jemalloc) with :data:`JEMALLOC_CONF`."""
    saved = {name: environ.get(name) for name in _PRELOADED}
    preload = " ".join(filter(None, (library, environ.get("LD_PRELOAD", ""))))
    return {**environ, "LD_PRELOAD": preload, "MALLOC_CONF": JEMALLOC_CONF, SAVED: json.dumps(saved)}


def restore_environ(environ: MutableMapping[str, str]) -> bool:
    """Undo :func:`preload_environ` in ``environ`` (True), or leave it alone where it was not set."""
    saved = environ.pop(SAVED, None)
    if saved is None:
        return False
    for name, value in json.loads(saved).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return True


def use_jemalloc(choice: str, argv: Sequence[str] | None = None) -> None:
    """Start this process over under jemalloc (``os.execve``: it does not return), or carry on.

    ``choice`` is one of :data:`ALLOCATORS`. It starts over only from a process on glibc's
    malloc, once (the process that starts over carries :data:`SAVED`), and with
    ``"system"`` never. ``"jemalloc"`` where there is none, or where it did not load, raises
    :class:`tnb.errors.TnbError`. ``argv``: the command line to run again (default: this
    process's, interpreter options included).
    """
    if choice not in ALLOCATORS:
        raise TnbError(f"allocator should be one of {ALLOCATORS}. Got {choice!r} instead.")
    started_over = restore_environ(os.environ)
    if choice == "system":
        return
    allocator = process_allocator()
    if started_over or allocator != "glibc":
        if choice == "jemalloc" and allocator != "jemalloc":
            why = ("jemalloc did not load (see the line above)" if started_over
                   else "another allocator is preloaded (LD_PRELOAD)")
            raise TnbError(f"--allocator jemalloc: this process runs on {allocator}'s malloc: {why}; "
                           "or use --allocator system")
        return
    library = find_jemalloc()
    if library is None:
        if choice == "jemalloc":
            raise TnbError("--allocator jemalloc: no jemalloc on this machine "
                           "(Debian/Ubuntu: apt-get install libjemalloc2; or --allocator system)")
        return
    sys.stdout.flush()
    sys.stderr.flush()
    args = list(argv) if argv is not None else list(sys.orig_argv)
    os.execve(sys.executable, args, preload_environ(os.environ, library))
