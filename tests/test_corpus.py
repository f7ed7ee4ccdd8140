"""Corpus sources: the bundled Wikipedia sample, local files, the hub (offline), errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tnb.corpus import Document, bundled_corpus_path, corpus_name, load_corpus
from tnb.errors import CorpusError

FIRST_TITLES = ["Anarchism", "Autism", "Albedo", "A", "Alabama", "Achilles", "Abraham Lincoln", "Aristotle"]


@pytest.fixture(scope="module")
def bundled() -> list[Document]:
    return list(load_corpus())


def write_parquet(path: Path, rows: dict[str, list[str]]) -> Path:
    pq.write_table(pa.table(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# -- the bundled sample -------------------------------------------------------------


def test_bundled_sample_has_the_wikimedia_schema():
    table = pq.read_table(bundled_corpus_path())
    assert table.schema == pa.schema([(name, pa.string()) for name in ("id", "url", "title", "text")])
    assert table.num_rows == 106
    ids = table.column("id").to_pylist()
    assert ids[:4] == ["12", "25", "39", "290"]  # page ids, in dump order
    assert len(set(ids)) == len(ids)
    assert table.column("url").to_pylist() == [f"https://en.wikipedia.org/wiki?curid={i}" for i in ids]
    assert pq.ParquetFile(bundled_corpus_path()).metadata.row_group(0).column(3).compression == "ZSTD"


def test_bundled_sample_loads_offline_in_dump_order(bundled):
    assert [doc.title for doc in bundled[: len(FIRST_TITLES)]] == FIRST_TITLES
    assert bundled[-1].title == "Algorithm"
    assert [doc.doc_id for doc in bundled] == list(range(106))
    assert bundled[0].text.startswith("Anarchism is a political philosophy that advocates self-governed societies")


def test_bundled_sample_is_plain_text(bundled):
    text = "\n".join(doc.text for doc in bundled)
    assert 2_500_000 < len(text) < 3_500_000
    for markup in ("{{", "}}", "[[", "]]", "<ref", "</", "'''", "{|", "Category:", "File:", "thumb|", "&nbsp;"):
        assert markup not in text, markup
    assert "\n\n\n" not in text and "  " not in text
    # Headings survive as their own paragraph, as in the wikimedia/wikipedia dataset.
    assert "\n\nEtymology and terminology\n\n" in bundled[0].text


def test_max_documents_stops_early():
    documents = load_corpus(max_documents=3)
    assert [doc.title for doc in documents] == FIRST_TITLES[:3]


def test_load_corpus_is_lazy():
    documents = load_corpus()
    assert next(documents).title == "Anarchism"
    assert next(documents).title == "Autism"


# -- local files --------------------------------------------------------------------


def test_local_parquet_skips_empty_texts(tmp_path):
    path = write_parquet(tmp_path / "mini.parquet", {"title": ["a", "b", "c", "d"], "text": ["one", "", "  \n", "four"]})
    documents = list(load_corpus(str(path)))
    assert documents == [Document(0, "a", "one"), Document(1, "d", "four")]


def test_local_jsonl_with_another_text_column_and_no_title(tmp_path):
    path = write_jsonl(tmp_path / "notes.jsonl", [{"body": "first note"}, {"body": "second note"}, {"body": "third"}])
    documents = list(load_corpus(str(path), text_column="body", max_documents=2))
    assert documents == [Document(0, "", "first note"), Document(1, "", "second note")]


def test_local_json_lines_with_json_suffix(tmp_path):
    path = write_jsonl(tmp_path / "notes.json", [{"text": "x y", "title": "t"}])
    assert list(load_corpus(str(path))) == [Document(0, "t", "x y")]


@pytest.mark.parametrize(
    ("sample_by", "expected"),
    [
        ("paragraph", ["First paragraph,\nsecond line.", "Second paragraph.", "Third."]),
        ("document", ["First paragraph,\nsecond line.\n\nSecond paragraph.\n\n\nThird."]),
        ("line", ["First paragraph,", "second line.", "Second paragraph.", "Third."]),
    ],
)
def test_local_txt_documents(tmp_path, sample_by, expected):
    path = tmp_path / "plain.txt"
    path.write_text("First paragraph,\nsecond line.\n\nSecond paragraph.\n\n\nThird.\n", encoding="utf-8")
    documents = list(load_corpus(str(path), txt_sample_by=sample_by))
    assert [doc.text for doc in documents] == expected
    assert [doc.doc_id for doc in documents] == list(range(len(expected)))


def test_local_directory_reads_files_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "from b"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "from a 1"}, {"text": "from a 2"}])
    (tmp_path / "README.md").write_text("not a corpus file")
    assert [doc.text for doc in load_corpus(str(tmp_path))] == ["from a 1", "from a 2", "from b"]


# -- names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "hub_config", "expected"),
    [
        (None, None, "enwiki_sample"),
        ("wikimedia/wikipedia", "20231101.en", "wikimedia_wikipedia.20231101.en"),
        ("wikitext", None, "wikitext"),
        ("/data/my corpus.parquet", None, "my_corpus"),
        ("notes.jsonl", None, "notes"),
    ],
)
def test_corpus_name(source, hub_config, expected):
    assert corpus_name(source, hub_config) == expected


def test_corpus_name_of_existing_directory(tmp_path):
    directory = tmp_path / "my docs"
    directory.mkdir()
    assert corpus_name(str(directory)) == "my_docs"


# -- errors -------------------------------------------------------------------------


def bad_sources(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Each bad input: load_corpus kwargs and the message it must give."""
    parquet = write_parquet(tmp_path / "mini.parquet", {"title": ["a"], "body": ["one"]})
    jsonl = write_jsonl(tmp_path / "mini.jsonl", [{"content": "one", "title": "a"}])
    empty = write_parquet(tmp_path / "empty.parquet", {"text": ["", " ", "\n"]})
    no_rows = write_parquet(tmp_path / "no_rows.parquet", {"text": pa.array([], pa.string())})
    blank_txt = tmp_path / "blank.txt"
    blank_txt.write_text("\n\n  \n")
    csv = tmp_path / "table.csv"
    csv.write_text("text\none\n")
    (tmp_path / "empty_dir").mkdir()
    return {
        "missing file": ({"source": str(tmp_path / "nope.parquet")}, r"Corpus file or directory '.*nope\.parquet' does not exist\."),
        "missing relative": ({"source": "./nope"}, r"'\./nope' does not exist"),
        "unknown column bundled": (
            {"text_column": "body"},
            r"Corpus 'enwiki_sample' \(bundled\) has no text column 'body'; its columns are: id, url, title, text\.",
        ),
        "unknown column parquet": ({"source": str(parquet)}, r"has no text column 'text'; its columns are: title, body\."),
        "unknown column jsonl": ({"source": str(jsonl)}, r"has no text column 'text'; its columns are: content, title\."),
        "empty texts": ({"source": str(empty)}, r"Corpus '.*empty\.parquet' is empty: no document has text in column 'text'\."),
        "no rows": ({"source": str(no_rows)}, r"is empty"),
        "blank txt": ({"source": str(blank_txt)}, r"is empty"),
        "max_documents 0": ({"max_documents": 0}, r"max_documents should be >= 1 or None\. Got 0 instead\."),
        "max_documents -2": ({"max_documents": -2}, r"max_documents should be >= 1 or None\. Got -2 instead\."),
        "unsupported suffix": ({"source": str(csv)}, r"suffix should be one of \.json, \.jsonl, \.parquet, \.txt\. Got '\.csv' instead\."),
        "empty directory": ({"source": str(tmp_path / "empty_dir")}, r"holds no \.json, \.jsonl, \.parquet, \.txt files"),
        "txt_sample_by": ({"txt_sample_by": "sentence"}, r"txt_sample_by should be .* Got 'sentence' instead\."),
    }


BAD_CASES = [
    "missing file",
    "missing relative",
    "unknown column bundled",
    "unknown column parquet",
    "unknown column jsonl",
    "empty texts",
    "no rows",
    "blank txt",
    "max_documents 0",
    "max_documents -2",
    "unsupported suffix",
    "empty directory",
    "txt_sample_by",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_corpus_fails_at_call_with_one_clear_line(tmp_path, case):
    kwargs, message = bad_sources(tmp_path)[case]
    source = kwargs.pop("source", None)
    with pytest.raises(CorpusError, match=message) as raised:
        load_corpus(source, **kwargs)  # raised at the call, not while iterating
    assert "\n" not in str(raised.value)


def test_mixed_directory_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}])
    (tmp_path / "b.txt").write_text("two")
    with pytest.raises(CorpusError, match=r"mixes file kinds \(json, text\)"):
        load_corpus(str(tmp_path))


def test_unreachable_hub_dataset_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError) as raised:
        load_corpus("tnb-test-nonexistent/no-such-dataset", hub_config="20231101.en")
    message = str(raised.value)
    assert "\n" not in message
    assert re.match(r"Cannot (load|read) corpus 'tnb-test-nonexistent/no-such-dataset' \(config '20231101\.en'\): \w+", message)


# -- a hub dataset from the datasets cache, offline --------------------------------------
HUB_ID, HUB_CONFIG = "wikimedia/wikipedia", "20231101.en"


def _datasets_cache(hf_home: Path, repo_id: str, config: str, shards: list[list[dict[str, str]]]) -> Path:
    """Lay rows out as ``datasets.load_dataset(repo_id, config)`` leaves a hub dataset in its cache.

    ``$HF_HOME/datasets/<owner>___<name>/<config>/0.0.0/<commit>/`` holds one Arrow stream
    file per shard, ``<name>-train-0000i-of-0000n.arrow``, and ``dataset_info.json`` with the
    split's shard lengths: what ``datasets``' ``Cache`` builder reads when the hub cannot be
    reached (``datasets/packaged_modules/cache/cache.py``), written with datasets' own writer.
    """
    import hashlib

    import datasets
    from datasets.arrow_writer import ArrowWriter

    owner, name = repo_id.split("/")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    directory = hf_home / "datasets" / f"{owner}___{name}" / config / "0.0.0" / commit
    directory.mkdir(parents=True)
    features = datasets.Features({column: datasets.Value("string") for column in ("id", "url", "title", "text")})
    total_bytes = 0
    for index, rows in enumerate(shards):
        with ArrowWriter(features=features, path=str(directory / f"{name}-train-{index:05d}-of-{len(shards):05d}.arrow")) as out:
            for row in rows:
                out.write(row)
            total_bytes += out.finalize()[1]
    splits = datasets.SplitDict(dataset_name=name)
    splits.add(datasets.SplitInfo("train", num_bytes=total_bytes, num_examples=sum(map(len, shards)),
                                  shard_lengths=[len(rows) for rows in shards], dataset_name=name))
    info = datasets.DatasetInfo(features=features, dataset_name=name, config_name=config, version="0.0.0", splits=splits)
    info.write_to_directory(str(directory))
    return directory


def test_hub_dataset_resolves_from_the_datasets_cache_offline(tmp_path):
    """``--corpus wikimedia/wikipedia --corpus-config 20231101.en`` with HF_HUB_OFFLINE=1 and a populated cache."""
    import subprocess
    import sys
    import textwrap

    from tnb.tokens import build_token_stream, gpt2_tokenizer

    table = pq.read_table(bundled_corpus_path()).slice(0, 4).to_pylist()
    rows = [{**row, "text": row["text"][:400]} for row in table]  # four short documents, two per shard
    _datasets_cache(tmp_path / "hf", HUB_ID, HUB_CONFIG, [rows[:2], rows[2:]])
    script = textwrap.dedent(
        f"""
        import json
        from tnb.corpus import load_corpus
        from tnb.errors import CorpusError
        from tnb.extract import ensure_token_stream
        from tnb.lake import Lake
        from tnb.tokens import gpt2_tokenizer
        stream = ensure_token_stream(Lake({str(tmp_path / "lake")!r}), {HUB_ID!r}, "gpt2", gpt2_tokenizer(), 256, 64,
                                     hub_config={HUB_CONFIG!r})
        try:
            load_corpus({HUB_ID!r}, hub_config="20231101.fr")
        except CorpusError as error:
            print(json.dumps({{"stream": stream, "other_config": str(error)}}))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stream"] == "wikimedia_wikipedia.20231101.en.gpt2.256x64"
    assert result["other_config"].startswith(
        "Cannot load corpus 'wikimedia/wikipedia' (config '20231101.fr'): ValueError: Couldn't find cache for wikimedia/wikipedia"
    )
    from tnb.lake import Lake, partition_key

    stored = Lake(tmp_path / "lake").read(partition_key("tokens", stream=result["stream"]))
    documents = [Document(i, row["title"], row["text"].strip()) for i, row in enumerate(rows)]
    expected = build_token_stream(documents, gpt2_tokenizer(), max_tokens=256, seq_len=64)
    assert stored.equals(expected)
    assert set(stored["doc_id"].to_pylist()) == {0, 1, 2, 3}  # both shards read, in order
