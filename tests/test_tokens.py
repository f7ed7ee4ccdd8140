"""Token stream: the bundled GPT-2 tokenizer, the stream's layout, laziness, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tnb.corpus import Document, load_corpus
from tnb.errors import CorpusError
from tnb.schemas import TOKENS
from tnb.tokens import (
    build_token_stream,
    document_separator,
    gpt2_tokenizer,
    gpt2_tokenizer_dir,
    stream_id,
)

EOS = 50256


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from tnb.models import minilm_dir

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def bundled_docs() -> list[Document]:
    return list(load_corpus(max_documents=5))


@pytest.fixture(scope="module")
def gpt2_stream(gpt2) -> pa.Table:
    return build_token_stream(load_corpus(), gpt2)  # the study's defaults: 20,000 x 128


def docs(*texts: str) -> list[Document]:
    return [Document(doc_id, f"doc {doc_id}", text) for doc_id, text in enumerate(texts)]


# -- the GPT-2 tokenizer ------------------------------------------------------------


def test_bundled_gpt2_tokenizer_files_are_the_released_ones():
    expected = {
        "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    }
    for name, sha256 in expected.items():
        assert hashlib.sha256((gpt2_tokenizer_dir() / name).read_bytes()).hexdigest() == sha256
    assert "Modified MIT License" in (gpt2_tokenizer_dir() / "LICENSE").read_text()


def test_gpt2_tokenizer_works_offline(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert len(gpt2) == 50257 and gpt2.eos_token_id == EOS
    assert document_separator(gpt2) == EOS


# -- the GPT-2 stream of the bundled corpus -----------------------------------------


def test_stream_has_the_tokens_schema_and_length(gpt2_stream):
    assert gpt2_stream.schema == TOKENS
    assert gpt2_stream.num_rows == 20_000


def test_stream_positions_and_sequences_are_consistent(gpt2_stream):
    pos = gpt2_stream.column("pos").to_numpy()
    seq_id = gpt2_stream.column("seq_id").to_numpy()
    seq_pos = gpt2_stream.column("seq_pos").to_numpy()
    np.testing.assert_array_equal(pos, np.arange(20_000))
    np.testing.assert_array_equal(seq_id * 128 + seq_pos, pos)
    lengths = np.bincount(seq_id)
    assert len(lengths) == 157 and set(lengths[:-1]) == {128} and lengths[-1] == 20_000 - 156 * 128


def test_stream_decodes_to_the_corpus_text(gpt2, gpt2_stream, bundled_docs):
    token_ids = gpt2_stream.column("token_id").to_numpy()
    doc_ids = gpt2_stream.column("doc_id").to_numpy()
    assert np.all(np.diff(doc_ids) >= 0) and doc_ids[0] == 0
    # Every document the stream holds whole decodes back to its text, separators dropped.
    for doc_id in np.unique(doc_ids)[:-1]:
        ids = token_ids[doc_ids == doc_id]
        assert ids[-1] == EOS and EOS not in ids[:-1]
        assert gpt2.decode(ids[:-1].tolist()) == bundled_docs[doc_id].text
    last = int(doc_ids[-1])
    assert bundled_docs[last].text.startswith(gpt2.decode(token_ids[doc_ids == last][:-1].tolist()))
    assert gpt2.decode(token_ids[:9].tolist()) == "Anarchism is a political philosophy that advocates"


def test_stream_tokens_are_readable_text(gpt2, gpt2_stream):
    token_ids = gpt2_stream.column("token_id").to_pylist()
    tokens = gpt2_stream.column("token").to_pylist()
    assert tokens[:4] == ["An", "arch", "ism", " is"]
    assert " the" in tokens and "<|endoftext|>" in tokens
    assert not any("Ġ" in token or "Ċ" in token for token in tokens)
    sample = np.random.default_rng(0).choice(len(tokens), 500, replace=False)
    assert all(tokens[i] == gpt2.decode([token_ids[i]]) for i in sample)


# -- planted small streams ----------------------------------------------------------


def test_documents_are_joined_with_eos_and_cut(gpt2):
    first, second = "The cat sat.", "A dog ran away quickly."
    ids = gpt2.encode(first) + [EOS] + gpt2.encode(second)
    table = build_token_stream(docs(first, second), gpt2, max_tokens=len(ids) - 2, seq_len=3)
    assert table.column("token_id").to_pylist() == ids[: len(ids) - 2]
    n_first = len(gpt2.encode(first))
    assert table.column("doc_id").to_pylist() == [0] * (n_first + 1) + [1] * (len(ids) - 3 - n_first)
    assert table.column("seq_id").to_pylist()[-1] == (len(ids) - 3) // 3


def test_only_needed_documents_are_tokenized(gpt2):
    pulled = []

    def documents() -> Iterator[Document]:
        for doc_id in range(1000):
            pulled.append(doc_id)
            yield Document(doc_id, "", " ".join(["word"] * 50))  # 50 tokens

    table = build_token_stream(documents(), gpt2, max_tokens=120, seq_len=10)
    assert table.num_rows == 120
    assert pulled == [0, 1, 2]  # 50 + 1 + 50 + 1 + 50 >= 120


def test_short_corpus_gives_a_shorter_stream_with_a_warning(gpt2):
    with pytest.warns(UserWarning, match=r"Corpus has only 11 tokens, fewer than max_tokens=100"):
        table = build_token_stream(docs("one two three four five", "six seven eight nine ten"), gpt2, 100, 4)
    assert table.num_rows == 11
    assert table.column("seq_pos").to_pylist() == [0, 1, 2, 3] * 2 + [0, 1, 2]


def test_bert_tokenizer_uses_sep_between_documents(minilm):
    assert document_separator(minilm) == minilm.sep_token_id == 102
    table = build_token_stream(load_corpus(), minilm, max_tokens=2_000, seq_len=128)
    assert table.schema == TOKENS and table.num_rows == 2_000
    token_ids = table.column("token_id").to_numpy()
    assert minilm.decode(token_ids[:8].tolist()) == "anarchism is a political philosophy that"
    assert 101 not in token_ids  # no [CLS]: special tokens are not added per document
    assert table.column("token").to_pylist()[:4] == ["ana", "##rch", "##ism", "is"]


# -- names and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("enwiki_sample", "gpt2", 20_000, 128), "enwiki_sample.gpt2.20000x128"),
        (("wikimedia_wikipedia.20231101.en", "minilm", 5_000, 64), "wikimedia_wikipedia.20231101.en.minilm.5000x64"),
        (("my corpus", "all-MiniLM/L6", 10, 2), "my_corpus.all-MiniLM_L6.10x2"),
    ],
)
def test_stream_id(args, expected):
    assert stream_id(*args) == expected


@pytest.mark.parametrize(
    ("max_tokens", "seq_len", "message"),
    [
        (0, 128, r"max_tokens should be an integer >= 1\. Got 0 instead\."),
        (-5, 128, r"max_tokens should be an integer >= 1\. Got -5 instead\."),
        (2.5, 1, r"max_tokens should be an integer >= 1\. Got 2\.5 instead\."),
        (True, 1, r"max_tokens should be an integer >= 1\. Got True instead\."),
        (100, 0, r"seq_len should be an integer >= 1\. Got 0 instead\."),
        (100, 128, r"seq_len should be <= max_tokens=100\. Got 128 instead\."),
    ],
)
def test_bad_sizes(gpt2, max_tokens, seq_len, message):
    with pytest.raises(ValueError, match=message):
        build_token_stream(docs("text"), gpt2, max_tokens=max_tokens, seq_len=seq_len)


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([], r"Corpus is empty: no document has any token\."),
        (docs("one two three"), r"Corpus has 3 tokens, fewer than one sequence of seq_len=8\."),
        (docs("one", "two"), r"Corpus has 3 tokens, fewer than one sequence of seq_len=8\."),  # with the eos
    ],
)
def test_too_little_text(gpt2, documents, message):
    with pytest.raises(CorpusError, match=message):
        build_token_stream(documents, gpt2, max_tokens=16, seq_len=8)


def test_tokenizer_without_a_separator_is_refused(gpt2, tmp_path: Path):
    from transformers import GPT2TokenizerFast

    bare = GPT2TokenizerFast.from_pretrained(str(gpt2_tokenizer_dir()), local_files_only=True)
    bare.eos_token = None
    with pytest.raises(ValueError, match=r"has neither an eos nor a sep token"):
        build_token_stream(docs("text"), bare)


def test_stream_is_a_valid_lake_partition(gpt2, tmp_path: Path):
    from tnb.lake import Lake, partition_key

    table = build_token_stream(docs("The cat sat on the mat.", "A dog ran."), gpt2, max_tokens=10, seq_len=4)
    key = partition_key("tokens", stream=stream_id("planted", "gpt2", 10, 4))
    lake = Lake(tmp_path / "lake")
    assert lake.write_table(key, table, {"corpus": "planted"})
    assert lake.read(key).equals(table)
