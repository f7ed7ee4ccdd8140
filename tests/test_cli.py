"""One command line over one study definition, and a core library that cannot leak.

- ``tnb run``'s options are the fields of :class:`tnb.params.Study`, one to one, with the
  fields' defaults (a parse of no option gives ``Study()``), and every subcommand says
  what it does and which defaults it takes;
- every module of ``tnb/`` but the command line imports without Prefect, in a fresh process;
- the modules of ``tnb/`` import one another without a cycle (module-level imports).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tnb.cli import build_parser, option_name, study_from_args
from tnb.params import BiclusterParams, ComputeParams, CorpusParams, ExtractParams, StageError, Study

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "tnb"
CLI_MODULES = {"tnb.cli", "tnb.__main__"}  # the entry point: it may start flows (lazily)
SECTIONS = {"corpus": CorpusParams, "extract": ExtractParams, "bicluster": BiclusterParams, "compute": ComputeParams}
# --grid K...: row_ks and col_ks at once; --allocator: the process's malloc, chosen when it starts (no study field:
# a deployment's flow runs on its worker's)
CLI_ONLY = {"-h", "--grid", "--allocator"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.option_strings[0]: action for action in parser._actions if action.option_strings}


def _study_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every field of a study that is an option: its dest (``corpus.max_tokens``) -> (option, field)."""
    fields = {}
    for field in dataclasses.fields(Study):
        if field.metadata.get("help"):
            fields[field.name] = (option_name(field), field)
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if field.metadata.get("help"):
                fields[f"{section}.{field.name}"] = (option_name(field), field)
    return fields


def test_run_options_are_the_study_fields_one_to_one() -> None:
    run = _options(_subcommands(build_parser())["run"])
    fields = _study_fields()
    by_dest = {action.dest: name for name, action in run.items() if name not in CLI_ONLY}
    assert set(by_dest) == set(fields), set(by_dest) ^ set(fields)
    for dest, (option, field) in fields.items():
        assert by_dest[dest] == option, (dest, by_dest[dest], option)
        action = run[option]
        assert action.default is None  # the field's default applies: defaults live in tnb.params only
        if field.type != "bool":
            assert "(default: " in action.help, option
        if "choices" in field.metadata:
            assert tuple(action.choices) == tuple(field.metadata["choices"]), option
    # and those are all the study's parameters, as a deployment passes them (extra: grid_search's, no option)
    dump = Study().dump()
    dumped = {f"{section}.{key}" for section in SECTIONS for key in dump[section]} | set(dump) - set(SECTIONS)
    assert dumped - {"bicluster.extra"} == set(fields)


def test_no_option_is_the_default_study_and_each_option_lands_in_its_field() -> None:
    parser = build_parser()
    assert study_from_args(parser.parse_args(["run"])) == Study()
    study = study_from_args(parser.parse_args([
        "run", "--lake", "L", "--corpus", "c.jsonl", "--max-tokens", "512", "--seq-len", "64", "--model", "a", "b",
        "--sites", "resid", "mlp", "--layers", "1", "2", "--no-control", "--add-bos", "--grid", "2", "3",
        "--col-ks", "4", "--n-null", "9", "--seed", "3", "--serial", "--null-chunk-size", "4", "--stages", "extract",
        "--no-progress",
    ]))
    assert study == Study(
        lake="L", corpus=CorpusParams(source="c.jsonl", max_tokens=512, seq_len=64),
        extract=ExtractParams(models=("a", "b"), sites=("resid", "mlp"), layers=(1, 2), control=False, add_bos=True),
        bicluster=BiclusterParams(row_ks=(2, 3), col_ks=(4,), n_null=9, seed=3),
        compute=ComputeParams(serial=True, null_chunk_size=4), stages=("extract",), progress=False,
    )
    assert Study.from_mapping(study.dump()) == study  # what a deployment passes round-trips


def test_old_option_names_still_parse() -> None:
    parser = build_parser()
    old = study_from_args(parser.parse_args(["extract", "--site", "resid", "--site", "mlp", "--bos"]))
    assert old.extract.sites == ("resid", "mlp") and old.extract.add_bos
    old = study_from_args(parser.parse_args(["run", "--workers", "3", "--null-chunk", "5"]))
    assert old.compute.n_workers == 3 and old.compute.null_chunk_size == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--n-null", "1"], "tnb: error: n_null should be an int >= 2. Got 1 instead."),
        (["run", "--max-tokens", "100", "--seq-len", "200"], "tnb: error: seq_len should be <= max_tokens=100. Got 200"),
        (["run", "--max-tokens", "0"], "tnb: error: max_tokens should be an int >= 1. Got 0 instead."),
        (["run", "--batch-size", "0"], "tnb: error: batch_size should be an int >= 1. Got 0 instead."),
        (["run", "--null-chunk-size", "0"], "tnb: error: null_chunk_size should be an int >= 1. Got 0 instead."),
        (["run", "--workers", "0"], "tnb: error: n_workers should be an int >= 1 or None. Got 0 instead."),
        (["run", "--layers", "-1"], "tnb: error: every layer should be an int >= 0. Got -1 instead."),
        (["bicluster", "--alpha", "2"], r"tnb: error: alpha should be in (0, 1). Got 2.0 instead."),
    ],
)
def test_bad_values_are_refused_once_with_the_fields_message(argv: list[str], message: str, capsys) -> None:
    from tnb.cli import main

    assert main([*argv, "--lake", "/nonexistent/tnb-lake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_study_from_mapping_refuses_unknown_and_mistyped_keys() -> None:
    from tnb.errors import TnbError

    with pytest.raises(TnbError, match=r"bad study parameters: corpus\.max_token: Unexpected keyword argument"):
        Study.from_mapping({"corpus": {"max_token": 5}})
    with pytest.raises(TnbError, match=r"corpus\.max_tokens: Input should be a valid integer"):
        Study.from_mapping({"corpus": {"max_tokens": "many"}})
    with pytest.raises(StageError, match="n_null should be an int >= 2. Got 1 instead."):
        Study.from_mapping({"bicluster": {"n_null": 1}})
    assert Study.from_mapping({"corpus": {"max_tokens": "300", "seq_len": 64}}).corpus.max_tokens == 300


def test_bicluster_config_in_manifests_is_unchanged() -> None:
    """Bicluster partitions store this dump; another one would make every lake 'made with another config'."""
    from tnb import __version__

    assert BiclusterParams().config() == {
        "method": "biclustering", "row_ks": [6, 9, 12], "col_ks": [6, 9, 12], "input": "abs",
        "null": "interaction_refit", "n_null": 99, "statistic": "r2_interaction", "n_seeds": 5, "n_shuffles": 100,
        "selection": "excess", "alpha": 0.05, "min_stability": 0.8, "seed": 0, "drop_first": 0, "extra": {},
        "code_version": __version__,
    }
    assert Study().dump()["bicluster"] == {k: v for k, v in BiclusterParams().config().items() if k != "code_version"}


def test_every_subcommand_says_what_it_does_and_its_defaults() -> None:
    for name, parser in _subcommands(build_parser()).items():
        assert parser.description and len(parser.description) > 40, name
        for option, action in _options(parser).items():
            if option == "-h" or action.nargs == 0 or isinstance(action, argparse._StoreConstAction):
                continue  # flags: off unless given
            assert action.help and "(default: " in action.help, f"tnb {name} {option}"
        assert "--lake" in _options(parser) or name == "server", name
        lake = _options(parser).get("--lake")
        assert lake is None or "(default: lake)" in lake.help % {"default": lake.default}, name


# ----------------------------------------------------------------------------- layers that cannot leak
def _core_modules() -> list[str]:
    return sorted(
        "tnb." + ".".join(path.relative_to(CORE).with_suffix("").parts) for path in CORE.rglob("*.py")
    )


def test_core_modules_never_import_prefect() -> None:
    modules = [name.removesuffix(".__init__") for name in _core_modules() if name not in CLI_MODULES]
    assert "tnb.lake" in modules and "tnb.bicluster_stage" in modules and "tnb.params" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'prefect' or m.startswith(('prefect.', 'flows')))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _module_imports(path: Path, name: str) -> set[str]:
    """The ``tnb`` modules that module ``name`` (file ``path``) imports at module level (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:  # the module's own statements: function bodies are not here
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ():
            if isinstance(sub, ast.Import):
                found |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    parent = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in sub.names}
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph (its nodes, the first repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in done:
            return None
        if name in visiting:
            return [*visiting[visiting.index(name):], name]
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


def test_no_import_cycles_in_tnb() -> None:
    modules = {name.removesuffix(".__init__"): CORE.parent / (name.replace(".", "/") + ".py") for name in _core_modules()}
    graph = {name: {target for target in _module_imports(path, name) if target in modules and target != name}
             for name, path in modules.items()}
    assert "tnb.lake" in graph["tnb.query"] and "tnb.params" in graph["tnb.cli"]  # the graph is really read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_planted_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from tnb import b\nfrom . import d\n\ndef f():\n    from tnb import c\n")
    imports = _module_imports(tmp_path / "a.py", "tnb.a")
    assert {"tnb", "tnb.b", "tnb.d"} <= imports
    assert "tnb.c" not in imports  # inside a function: not at import time
    assert find_cycle({"tnb.a": {"tnb.b"}, "tnb.b": {"tnb.c"}, "tnb.c": {"tnb.a"}}) == ["tnb.a", "tnb.b", "tnb.c", "tnb.a"]
    assert find_cycle({"tnb.a": {"tnb.b"}, "tnb.b": {"tnb.c"}, "tnb.c": set()}) is None
