"""``tnb verify``: hash every partition of a lake, report what is broken or stale, and repair it.

What :meth:`tnb.lake.Lake.check` finds, per partition:

``corrupt`` / ``incomplete``
    the data file's checksum, size or rows disagree with its manifest, or one of the two
    is missing. Repair recomputes an ``activations`` partition (from the model, the token
    stream, the dtype and the special tokens its manifest names) and ``labels``/``metrics`` (from the
    bicluster parameters in their manifest); anything it cannot recompute (a ``tokens`` or
    ``models`` partition, a partition whose manifest is gone) is removed, and the command
    that makes it again is named.
``stale``
    a derived partition computed from inputs that have changed since; repair recomputes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from tnb.errors import LakeError, TnbError
from tnb.keys import INT_KEYS, PARTITION_KEYS
from tnb.lake import DATA_FILE, MANIFEST_FILE, Lake, PartitionKey, partition_key


@dataclass(frozen=True)
class Repair:
    partition: str
    problem: str
    action: str  # "recomputed", "removed; ..." or "failed: ..."


def _key_of(name: str) -> PartitionKey:
    table, *parts = name.split("/")
    values = {}
    for part in parts:
        key, _, raw = part.partition("=")
        values[key] = int(raw) if key in INT_KEYS else raw
    return partition_key(table, **values)


def _manifest_config(lake: Lake, key: PartitionKey) -> dict | None:
    try:
        return json.loads((lake.partition_dir(key) / MANIFEST_FILE).read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _recorded_config(lake: Lake, key: PartitionKey) -> dict | None:
    """The config that made ``key``: its manifest's, else (manifest gone) that of a partition made with it.

    ``labels`` and ``metrics`` of one layer share their config, and so do all the
    activations partitions of one model.
    """
    config = _manifest_config(lake, key)
    if config is not None:
        return config
    values = key.as_dict()
    if key.table in ("labels", "metrics"):
        sibling = partition_key("metrics" if key.table == "labels" else "labels", **values)
        return _manifest_config(lake, sibling)
    if key.table == "activations":
        base = lake.root / "activations" / f"model={values['model']}"
        for manifest_path in sorted(base.glob(f"*/*/{MANIFEST_FILE}")):
            try:
                return json.loads(manifest_path.read_text())["config"]
            except (OSError, ValueError, KeyError):
                continue
    return None


def _recompute(lake: Lake, key: PartitionKey, config: dict) -> None:
    values = key.as_dict()
    if key.table == "activations":
        from tnb.extract import extract_activations, recorded_add_bos
        from tnb.models import resolve_model, untrained_twin

        spec = resolve_model(config["source"])
        if config.get("trained") is False:  # an untrained twin: the same random initialisation again
            spec = untrained_twin(spec, seed=int(config["init_seed"]))
        if spec.name != values["model"]:
            raise LakeError(f"its config names {spec.name!r}, not {values['model']!r}")
        extract_activations(
            lake, spec, config["stream"], (str(values["site"]),), [int(values["layer"])],
            dtype=config.get("dtype", "float16"), overwrite=True, progress=False, add_bos=recorded_add_bos(config),
        )
    elif key.table in ("labels", "metrics"):
        from tnb.bicluster_stage import BiclusterParams, bicluster_partition

        params = BiclusterParams.from_mapping(config)
        model, site, layer = str(values["model"]), str(values["site"]), int(values["layer"])
        bicluster_partition(lake, model, site, layer, params, overwrite=True)
    else:
        raise LakeError(f"a {key.table} partition cannot be recomputed here")


def repair(lake: Lake, problems: list[tuple[str, str]]) -> list[Repair]:
    """Recompute (or remove) every partition in ``problems``: inputs first, then what derives from them."""
    order = {table: rank for rank, table in enumerate(PARTITION_KEYS)}
    done: list[Repair] = []
    redone: set[tuple] = set()
    for name, problem in sorted(problems, key=lambda item: order[item[0].split("/", 1)[0]]):
        key = _key_of(name)
        config = _recorded_config(lake, key)
        values = key.as_dict()
        layer_id = (values.get("model"), values.get("site"), values.get("layer"), values.get("method"))
        if key.table in ("labels", "metrics") and layer_id in redone:
            done.append(Repair(name, problem, "recomputed (with its sibling)"))
            continue
        try:
            if config is None:
                raise LakeError("its manifest is gone")
            _recompute(lake, key, config)
            redone.add(layer_id)
            done.append(Repair(name, problem, "recomputed"))
        except (TnbError, KeyError, OSError) as error:
            _remove_files(lake, key)
            again = "tnb extract" if key.table in ("tokens", "models", "activations") else "tnb bicluster"
            done.append(Repair(name, problem, f"removed ({error}); run `{again}` to make it again"))
    return done


def _remove_files(lake: Lake, key: PartitionKey) -> None:
    directory = lake.partition_dir(key)
    with lake.lock(key):
        for file_name in (MANIFEST_FILE, DATA_FILE):
            (directory / file_name).unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass


def _cmd_verify(args: argparse.Namespace) -> int:
    lake = Lake(args.lake, read_only=not args.repair)
    problems = lake.check()
    if not problems:
        print(f"tnb verify: every partition in {lake.root} matches its manifest and its inputs")
        return 0
    for name, problem in problems:
        print(f"{name}: {problem}")
    if not args.repair:
        raise TnbError(f"{len(problems)} partitions are corrupt, incomplete or stale; `tnb verify --lake {args.lake} "
                       "--repair` recomputes them")
    left = problems
    for _ in range(3):  # a recomputed input can make what derives from it stale: repair that too
        for item in repair(lake, left):
            print(f"{item.partition}: {item.action}")
        left = lake.check()
        if not left:
            break
    if left:
        raise TnbError(f"{len(left)} partitions still need work after the repair: {', '.join(n for n, _ in left)}")
    print(f"tnb verify: {len(problems)} partitions recomputed or removed in {lake.root}; it is consistent now")
    return 0


if __name__ == "__main__":
    from tnb.cli import main

    sys.exit(main(["verify", *sys.argv[1:]]))
