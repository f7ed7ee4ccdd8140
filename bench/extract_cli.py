"""`tnb extract` as users run it: the command started over under jemalloc (``--allocator
auto``, where jemalloc is installed) against the same command on glibc's malloc
(``--allocator system``).

For each of ``--tokens`` (token positions of the stream), ``--repeats`` rounds run the two
side by side (auto, system, auto, system ...), each a whole ``tnb extract`` of every residual
layer into a fresh lake that already holds the token stream (made once per size with ``tnb
ingest``), reporting to one Prefect server that this benchmark starts on 127.0.0.1 (so no
run starts its own). Per run: wall seconds and the process's peak RSS (``wait4``'s
``ru_maxrss``: the whole command, model and libraries included; the model is the same in
both, so differences between sizes and allocators are the extraction's). Printed: min /
median / max of each, the ratio of medians, the growth of the median peak from the smallest
size to the largest, the malloc each run reported (``malloc: ...`` on its last line), and the
load average before and after.

    python bench/extract_cli.py                       # GPT-2-small shape, 5,000 and 80,000 tokens, 3 rounds
    python bench/extract_cli.py --model minilm --tokens 5000 20000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import extract as cpu_bench  # bench/extract.py: the random GPT-2-small model, load average, min/median/max

ALLOCATORS = ("auto", "system")
BUSY = 1.5  # 1-min load average above which a run is flagged (2 cores)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(tnb: list[str], env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([*tnb, "server", "--port", str(port)], env=env, cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            time.sleep(1)
    server.kill()
    sys.exit("the Prefect server did not answer within 180 s")


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and the last line of output of one command."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} ... failed ({child.returncode}):\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, output.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: a GPT-2-small-shaped random model")
    parser.add_argument("--tokens", type=int, nargs="+", default=[5_000, 80_000], help="stream sizes")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds at every size")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats should be >= 1. Got {args.repeats} instead.")
    tnb = [sys.executable, "-m", "tnb"]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    line, load_before = cpu_bench.load_line("before")
    print(line)
    with tempfile.TemporaryDirectory(prefix="tnb-bench-cli-") as tmp:
        work = Path(tmp)
        env["TNB_RUNTIME_DIR"] = str(work / ".tnb")
        model = args.model
        if model is None:
            model = str(work / "gpt2-small-random")
            cpu_bench.run_child(["--child", "make-model", "--lake", model])
        server, env["PREFECT_API_URL"] = start_server(tnb, env, work)
        rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
        try:
            for tokens in args.tokens:
                streams = work / f"tokens-{tokens}"
                subprocess.run([*tnb, "ingest", "--lake", str(streams), "--model", model, "--max-tokens", str(tokens)],
                               env=env, cwd=work, check=True, capture_output=True)
                for round_ in range(args.repeats):
                    for allocator in ALLOCATORS:
                        lake = work / f"lake-{tokens}-{round_}-{allocator}"
                        shutil.copytree(streams, lake)
                        seconds, peak, last = timed(
                            [*tnb, "extract", "--lake", str(lake), "--model", model, "--max-tokens", str(tokens),
                             "--batch-size", str(args.batch_size), "--no-progress", "--allocator", allocator],
                            env, work)
                        shutil.rmtree(lake)
                        found = re.search(r"malloc: (\w+)", last)
                        malloc = found.group(1) if found else "?"
                        if allocator == "auto" and malloc != "jemalloc":
                            sys.exit(f"--allocator auto ran on {malloc}'s malloc: is jemalloc installed? ({last})")
                        load = os.getloadavg()[0]
                        rows.setdefault((allocator, tokens), []).append((seconds, peak))
                        print(f"  round {round_ + 1} {allocator:6s} ({malloc:8s}) {tokens:6d} tok: {seconds:6.1f} s, "
                              f"{tokens / seconds:5.0f} tok/s, peak {peak:6.0f} MB, load {load:.2f}"
                              f"{'  (busy)' if load > BUSY else ''}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    line, load_after = cpu_bench.load_line("after")
    print(line + ("  (busy machine: read the ratios, not the seconds)" if max(load_before, load_after) > BUSY else ""))
    print(f"\n`tnb extract`, {args.repeats} interleaved rounds (min / median / max):")
    for tokens in args.tokens:
        for allocator in ALLOCATORS:
            runs = rows[(allocator, tokens)]
            print(f"  {tokens:6d} tok  --allocator {allocator:6s}: wall {cpu_bench.spread([s for s, _ in runs], 1)} s, "
                  f"peak {cpu_bench.spread([p for _, p in runs])} MB")
        speed = {a: statistics.median(s for s, _ in rows[(a, tokens)]) for a in ALLOCATORS}
        print(f"  {tokens:6d} tok  wall, ratio of medians auto / system: {speed['auto'] / speed['system']:.3f}x "
              f"(below 1: auto faster)")
    first, last_size = min(args.tokens), max(args.tokens)
    for allocator in ALLOCATORS:
        peaks = [statistics.median(p for _, p in rows[(allocator, t)]) for t in (first, last_size)]
        print(f"  peak growth {first:,} -> {last_size:,} tokens, --allocator {allocator}: "
              f"{peaks[0]:.0f} -> {peaks[1]:.0f} MB ({peaks[1] - peaks[0]:+.0f} MB, medians)")


if __name__ == "__main__":
    main()
