"""tnb.allocator: the commands that extract start over under jemalloc, once, and their children do not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tnb.allocator import (
    JEMALLOC_CONF,
    SAVED,
    find_jemalloc,
    preload_environ,
    process_allocator,
    restore_environ,
    use_jemalloc,
)
from tnb.errors import TnbError

needs_jemalloc = pytest.mark.skipif(
    find_jemalloc() is None or process_allocator() != "glibc",
    reason="no jemalloc here (Debian: apt-get install libjemalloc2), or not glibc's malloc in this process",
)

#: what the process that started over sees, after use_jemalloc has put the environment back
PROBE = ("import json, os, tnb.allocator as a; print(json.dumps([a.process_allocator(), os.environ.get('LD_PRELOAD'), "
         "os.environ.get('MALLOC_CONF'), a.SAVED in os.environ, os.getpid()]))")


def _start_over(choice: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """A process that prints its id, calls use_jemalloc(choice) (which runs this same command line
    again if it starts over), then PROBE."""
    code = ("import os, tnb.allocator as a; print(os.getpid(), flush=True); "
            f"a.use_jemalloc({choice!r}); exec(os.environ['PROBE'])")
    return subprocess.run([sys.executable, "-c", code], env={**environ, "PROBE": PROBE}, capture_output=True,
                          text=True, timeout=120, check=False)


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", SAVED)}


def test_preload_environ_and_restore_environ_undo_each_other() -> None:
    for before in ({"PATH": "/bin"}, {"PATH": "/bin", "LD_PRELOAD": "libother.so", "MALLOC_CONF": "x:1"}):
        environ = preload_environ(before, "libjemalloc.so.2")
        assert environ["MALLOC_CONF"] == JEMALLOC_CONF
        assert environ["LD_PRELOAD"].split() == ["libjemalloc.so.2", *before.get("LD_PRELOAD", "").split()]
        assert json.loads(environ[SAVED]) == {"LD_PRELOAD": before.get("LD_PRELOAD"),
                                              "MALLOC_CONF": before.get("MALLOC_CONF")}
        assert restore_environ(environ) is True
        assert environ == before
        assert restore_environ(environ) is False and environ == before  # nothing to undo twice


def test_bad_or_unmet_allocator_choices_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TnbError, match=r"allocator should be one of \('auto', 'jemalloc', 'system'\)\. Got 'tc"):
        use_jemalloc("tcmalloc")
    import tnb.allocator

    monkeypatch.setattr(tnb.allocator, "find_jemalloc", lambda: None)
    monkeypatch.setattr(tnb.allocator, "process_allocator", lambda: "glibc")
    with pytest.raises(TnbError, match=r"--allocator jemalloc: no jemalloc on this machine"):
        use_jemalloc("jemalloc")
    assert use_jemalloc("auto") is None  # none here: carry on, on glibc's
    assert use_jemalloc("system") is None


@needs_jemalloc
def test_auto_starts_over_once_under_jemalloc_and_puts_the_environment_back() -> None:
    done = _start_over("auto", _clean_environ())
    assert done.returncode == 0, done.stderr[-1000:]
    pid, pid_again, probe = done.stdout.splitlines()  # started over once, not twice
    allocator, preload, conf, saved, pid_after = json.loads(probe)
    assert allocator == "jemalloc" and int(pid) == int(pid_again) == pid_after  # the same process
    assert (preload, conf, saved) == (None, None, False)  # what it starts in turn runs on the user's allocator


@needs_jemalloc
def test_system_and_a_process_that_started_over_carry_on_as_they_are() -> None:
    done = _start_over("system", _clean_environ())
    assert done.returncode == 0, done.stderr[-1000:]
    assert len(done.stdout.splitlines()) == 2  # it did not start over
    assert json.loads(done.stdout.splitlines()[1])[:4] == ["glibc", None, None, False]
    # already started over (its marker set) but jemalloc did not load: no second start, and auto carries on
    environ = {**_clean_environ(), SAVED: json.dumps({"LD_PRELOAD": None, "MALLOC_CONF": None})}
    done = _start_over("auto", environ)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    assert json.loads(done.stdout.splitlines()[1])[:4] == ["glibc", None, None, False]
    done = _start_over("jemalloc", environ)
    assert done.returncode == 1 and "--allocator jemalloc: this process runs on glibc's malloc: jemalloc did not load" in done.stderr


@needs_jemalloc
def test_under_jemalloc_freed_pages_stay_until_purged() -> None:
    """JEMALLOC_CONF keeps freed pages for reuse; purge_jemalloc hands them back (the end of an extraction)."""
    code = """
import json, tnb.allocator as a
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
block = bytearray(256 * 2**20); block[::4096] = b'x' * len(block[::4096]); del block
kept = rss()
purged = a.purge_jemalloc()
print(json.dumps([a.process_allocator(), kept, purged, rss()]))
"""
    environ = preload_environ(_clean_environ(), find_jemalloc() or "")
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-1000:]
    allocator, kept, purged, after = json.loads(done.stdout)
    assert allocator == "jemalloc" and purged is True
    assert kept - after > 200, (kept, after)  # the 256 MiB block's pages were resident until the purge


def test_off_jemalloc_purge_does_nothing() -> None:
    from tnb.allocator import purge_jemalloc

    if process_allocator() == "jemalloc":
        pytest.skip("this test process runs on jemalloc")
    assert purge_jemalloc() is False
