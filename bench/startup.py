"""Benchmark: wall time of the commands that only read the lake (`tnb --help`, `tnb query`).

Each command runs as a fresh process (the installed `tnb` entry point) several
times, interleaved; with --compare, the same commands also run against another
source tree (e.g. an exported older commit, put first on PYTHONPATH), so both
see the same load. Prints min / median / max and the load average.

Run:  python bench/startup.py --lake lake
      git archive f77d7d0 | tar -x -C /tmp/base && python bench/startup.py --lake lake --compare /tmp/base
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", type=Path, required=True, help="a lake with metrics (e.g. the quickstart's)")
    parser.add_argument("--query", default="emergence_curves")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, default=None, help="another source tree to time side by side")
    args = parser.parse_args(argv)
    trees = {"this tree": REPO}
    if args.compare:
        trees[f"{args.compare}"] = args.compare.resolve()
    query = ["query", "--lake", str(args.lake.resolve()), args.query]
    commands = {"tnb --help": ["--help"], f"tnb query --lake L {args.query}": query}
    executable = Path(sys.executable).with_name("tnb")
    times = {(tree, name): [] for tree in trees for name in commands}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for tree, path in trees.items():
            env = {**os.environ, "PYTHONPATH": str(path), "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run([str(executable), *command], check=True, stdout=subprocess.DEVNULL, env=env)
                times[(tree, name)].append(time.perf_counter() - start)
    for (tree, name), values in times.items():
        print(
            f"{tree}: {name}: min {min(values):.2f} / median {statistics.median(values):.2f} / "
            f"max {max(values):.2f} s (n={len(values)})"
        )
    load_after = os.getloadavg()[0]
    print(f"1-min load average before / after: {load_before:.2f} / {load_after:.2f} (os.cpu_count()={os.cpu_count()})")


if __name__ == "__main__":
    main()
