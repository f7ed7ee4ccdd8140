"""Token stream: one fixed sequence of token positions per (corpus, tokenizer).

Documents are tokenized in corpus order without special tokens and joined with the
tokenizer's document separator between consecutive documents: ``eos_token`` when the
tokenizer has one (GPT-2: ``<|endoftext|>`` = 50256), else ``sep_token`` (BERT-like:
``[SEP]`` = 102). A separator belongs to the document it ends (its ``doc_id``). The
stream is cut to exactly ``max_tokens`` positions and split into consecutive sequences
of ``seq_len`` positions; when ``seq_len`` does not divide ``max_tokens`` the last
sequence is shorter (20,000 = 156 x 128 + 32). Only as many documents are tokenized as
the stream needs.

Each position keeps its token as readable text (``" the"``, not ``"Ġthe"``): what
``tokenizer.decode([token_id])`` gives. A byte-level BPE token that is part of one
multi-byte character decodes to ``"\\ufffd"``; WordPiece continuations keep their ``##``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tnb.corpus import Document
from tnb.errors import CorpusError
from tnb.lake import sanitize_value
from tnb.schemas import TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_TOKENS = 20_000  # token positions in the study's stream
DEFAULT_SEQ_LEN = 128  # positions per sequence fed to a model


def gpt2_tokenizer_dir() -> Path:
    """Directory of the bundled GPT-2 tokenizer files (``vocab.json``, ``merges.txt``)."""
    return Path(str(resources.files("tnb") / "data" / "gpt2-tokenizer"))


def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """The GPT-2 tokenizer (shared by every GPT-2 size), from package data, offline.

    ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently ignores its files in
    transformers 5, so the directory is loaded with ``from_pretrained``.
    """
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]  # transformers' lazy module hides it from mypy

    tokenizer = GPT2TokenizerFast.from_pretrained(str(gpt2_tokenizer_dir()), local_files_only=True)
    assert len(tokenizer) == 50_257 and tokenizer.eos_token_id == 50_256, (
        f"bundled GPT-2 tokenizer is broken: vocab {len(tokenizer)}, eos {tokenizer.eos_token_id}"
    )
    return tokenizer


def document_separator(tokenizer: PreTrainedTokenizerBase) -> int:
    """Token id put between documents: ``eos`` if the tokenizer has one, else ``sep``."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither an eos nor a sep token to separate documents.")


def stream_id(corpus_name: str, tokenizer_name: str, max_tokens: int, seq_len: int) -> str:
    """Partition value naming a token stream: ``"enwiki_sample.gpt2.20000x128"``."""
    return f"{sanitize_value(corpus_name)}.{sanitize_value(tokenizer_name)}.{int(max_tokens)}x{int(seq_len)}"


def _check_sizes(max_tokens: int, seq_len: int) -> None:
    for name, value in (("max_tokens", max_tokens), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} should be an integer >= 1. Got {value!r} instead.")
    if seq_len > max_tokens:
        raise ValueError(f"seq_len should be <= max_tokens={max_tokens}. Got {seq_len} instead.")


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # verbose=False: a whole article is longer than BERT's 512 and the warning is noise here.
    return tokenizer.encode(text, add_special_tokens=False, verbose=False)


def _encode_prefix(tokenizer: PreTrainedTokenizerBase, text: str, needed: int) -> list[int]:
    """The first ``needed`` (or more) token ids of ``text``, tokenizing only a prefix of a long document.

    Memory is then bounded by ``max_tokens``, not by the longest document (a 26 MB
    document took 3.95 GB whole). The prefix is cut far beyond the tokens kept, and
    grown until it yields ``needed`` tokens with a margin, so the tokens kept are those of
    the whole document: a cut changes only the token it falls in.
    """
    limit = max(needed, 1) * _CHARS_PER_TOKEN
    while limit < len(text):
        ids = _encode(tokenizer, text[:limit])
        if len(ids) >= needed + _CUT_MARGIN:
            return ids[:needed]
        limit *= 4
    return _encode(tokenizer, text)


_CHARS_PER_TOKEN = 32  # prefix length per token still needed (a token averages ~4-5 characters of English)
_CUT_MARGIN = 8  # tokens beyond those kept, so that a cut mid-word never reaches them


def _readable_tokens(tokenizer: PreTrainedTokenizerBase, token_ids: np.ndarray) -> pa.Array:
    """``decode([id])`` of every position, decoding each distinct id once."""
    unique_ids, inverse = np.unique(token_ids, return_inverse=True)
    texts = pa.array([tokenizer.decode([int(token_id)]) for token_id in unique_ids], type=pa.string())
    return texts.take(pa.array(inverse.astype(np.int32)))


def build_token_stream(
    documents: Iterable[Document],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> pa.Table:
    """Tokenize documents in order into one stream of ``max_tokens`` positions.

    Parameters
    ----------
    documents : iterable of Document
        In corpus order, e.g. ``load_corpus(...)``; consumed lazily, only as far as needed.
    tokenizer : PreTrainedTokenizerBase
        Any Hugging Face tokenizer with an eos or a sep token.
    max_tokens : int
        Positions in the stream. A corpus with fewer tokens gives a shorter stream (with
        a warning), as long as it fills at least one sequence.
    seq_len : int
        Positions per sequence (``seq_len <= max_tokens``); the last sequence may be shorter.

    Returns
    -------
    pyarrow.Table with schema ``tnb.schemas.TOKENS``, ``n_tokens`` rows
        ``pos`` (0..n_tokens-1), ``doc_id``, ``seq_id = pos // seq_len``,
        ``seq_pos = pos % seq_len``, ``token_id``, ``token`` (readable text).
    """
    _check_sizes(max_tokens, seq_len)
    separator = document_separator(tokenizer)
    token_chunks: list[np.ndarray] = []
    doc_chunks: list[np.ndarray] = []
    n_tokens = 0
    for document in documents:
        ids = _encode_prefix(tokenizer, document.text, max_tokens - n_tokens)
        if not ids:
            continue
        if token_chunks:  # the separator ends the previous document
            token_chunks.append(np.array([separator], dtype=np.int32))
            doc_chunks.append(np.array([doc_chunks[-1][-1]], dtype=np.int32))
            n_tokens += 1
        token_chunks.append(np.asarray(ids, dtype=np.int32))
        doc_chunks.append(np.full(len(ids), document.doc_id, dtype=np.int32))
        n_tokens += len(ids)
        if n_tokens >= max_tokens:  # stop before pulling (and tokenizing) another document
            break

    if n_tokens == 0:
        raise CorpusError("Corpus is empty: no document has any token.")
    if n_tokens < seq_len:
        raise CorpusError(f"Corpus has {n_tokens} tokens, fewer than one sequence of seq_len={seq_len}.")
    if n_tokens < max_tokens:
        warnings.warn(
            f"Corpus has only {n_tokens} tokens, fewer than max_tokens={max_tokens}; the stream is shorter.",
            stacklevel=2,
        )
    token_ids = np.concatenate(token_chunks)[:max_tokens]
    doc_ids = np.concatenate(doc_chunks)[:max_tokens]
    pos = np.arange(len(token_ids), dtype=np.int32)
    columns = {
        "pos": pa.array(pos),
        "doc_id": pa.array(doc_ids),
        "seq_id": pa.array(pos // np.int32(seq_len)),
        "seq_pos": pa.array(pos % np.int32(seq_len)),
        "token_id": pa.array(token_ids),
        "token": _readable_tokens(tokenizer, token_ids),
    }
    return pa.Table.from_pydict(columns, schema=TOKENS)


#: Text whose tokenization shows where a tokenizer's ``__call__`` puts its special tokens.
_PROBE_TEXT = "The cat sat on the mat."


@dataclass(frozen=True)
class Wrapping:
    """Special tokens put around every sequence, as the model's tokenizer puts them.

    The stream holds content positions only, identical for every model with the same
    tokenizer; the wrapping is added at extraction time. Its positions' activations are
    stored as rows flagged ``special`` (see :func:`tnb.schemas.activations_schema`), which
    no tokens x neurons matrix holds unless asked (:meth:`tnb.lake.Lake.read_layer`).
    """

    prefix: tuple[int, ...]  # e.g. (101,) = [CLS] for BERT, (bos,) for a Llama tokenizer
    suffix: tuple[int, ...]  # e.g. (102,) = [SEP] for BERT

    def apply(self, token_ids: np.ndarray) -> np.ndarray:
        """Wrap every row of ``token_ids`` (shape (n_sequences, seq_len)) in the special tokens."""
        n_rows = token_ids.shape[0]
        prefix = np.tile(np.asarray(self.prefix, dtype=token_ids.dtype), (n_rows, 1))
        suffix = np.tile(np.asarray(self.suffix, dtype=token_ids.dtype), (n_rows, 1))
        return np.concatenate([prefix, token_ids, suffix], axis=1)

    def content(self, seq_len: int) -> slice:
        """Where the content positions sit in a wrapped sequence of ``seq_len`` content tokens."""
        return slice(len(self.prefix), len(self.prefix) + seq_len)

    def special_mask(self, seq_len: int) -> np.ndarray:
        """True at the special positions of a wrapped sequence of ``seq_len`` content tokens.

        >>> Wrapping((101,), (102,)).special_mask(2).tolist()
        [True, False, False, True]
        """
        mask = np.ones(len(self.prefix) + seq_len + len(self.suffix), dtype=bool)
        mask[self.content(seq_len)] = False
        return mask

    def template(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """Readable form for the models table: ``"[CLS] {content} [SEP]"``."""
        parts = [*tokenizer.convert_ids_to_tokens(list(self.prefix)), "{content}"]
        return " ".join([*parts, *tokenizer.convert_ids_to_tokens(list(self.suffix))])


def special_wrapping(tokenizer: PreTrainedTokenizerBase, add_bos: bool = False) -> Wrapping:
    """The special tokens the tokenizer's own ``__call__`` puts around a text.

    BERT gives ``[CLS] ... [SEP]``, a Llama tokenizer that adds a BOS gives ``<s> ...``,
    GPT-2 gives nothing (as the study ran it). ``add_bos`` prepends the tokenizer's
    ``bos_token`` when ``__call__`` puts nothing first (GPT-2: ``<|endoftext|>``).
    """
    plain = _encode(tokenizer, _PROBE_TEXT)
    full = list(tokenizer(_PROBE_TEXT)["input_ids"])
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain]
    if not starts:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} changes the text's tokens when it adds special tokens; "
            "cannot tell where its special tokens go"
        )
    start = starts[0]
    prefix, suffix = tuple(full[:start]), tuple(full[start + len(plain) :])
    if add_bos and not prefix:
        if tokenizer.bos_token_id is None:
            raise ValueError(f"add_bos: tokenizer {tokenizer.name_or_path!r} has no bos_token")
        prefix = (int(tokenizer.bos_token_id),)
    return Wrapping(tuple(int(i) for i in prefix), tuple(int(i) for i in suffix))
