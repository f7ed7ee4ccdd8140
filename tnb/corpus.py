"""Corpus: where the text comes from, as a lazy stream of documents in corpus order.

Sources (``load_corpus(source)``):

- ``None``: the bundled sample, ``tnb/data/enwiki_sample.parquet``: the first 106
  English Wikipedia articles in dump order (Anarchism, Autism, Albedo, A, ...) as plain
  text, in the schema of the ``wikimedia/wikipedia`` dataset (``id, url, title, text``).
  See ``tnb/data/ENWIKI_LICENSE.md`` (CC BY-SA 4.0) and ``scripts/make_enwiki_sample.py``.
- A local file or directory, read lazily by ``datasets`` (streaming, no cache is built):
  ``.parquet``, ``.jsonl`` / ``.json`` (JSON Lines), ``.txt``. A directory is read as all
  its files of one of these kinds, in sorted path order. A ``.txt`` file holds one
  document per blank-line-separated paragraph by default (``txt_sample_by="paragraph"``);
  ``"document"`` makes each file one document, ``"line"`` each line.
- A Hugging Face hub dataset id such as ``"wikimedia/wikipedia"`` with ``hub_config=
  "20231101.en"``, streamed (nothing is downloaded up front). Needs the network, or the
  dataset prepared in the ``datasets`` cache (``$HF_HOME/datasets/wikimedia___wikipedia/
  20231101.en/0.0.0/<commit>/``, as a non-streaming ``datasets.load_dataset`` leaves it),
  which ``HF_HUB_OFFLINE=1`` reads from; one not cached then fails at once with a
  ``CorpusError``.

Documents whose text is empty or only whitespace are skipped; ``doc_id`` numbers the
documents that are kept, 0, 1, 2, ... in corpus order.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from tnb.errors import CorpusError
from tnb.lake import sanitize_value

BUNDLED_NAME = "enwiki_sample"  #: corpus_name(None)
BUNDLED_FILE = "enwiki_sample.parquet"

#: File suffix -> the ``datasets`` packaged builder that reads it.
BUILDERS: dict[str, str] = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}

# "owner/name" or "name", as the hub spells dataset ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")

TxtSampleBy = Literal["paragraph", "document", "line"]


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    doc_id: int  # ordinal among the corpus's non-empty documents, from 0
    title: str  # "" when the source has no title column
    text: str


def bundled_corpus_path() -> Path:
    """Path of the bundled Wikipedia sample (package data)."""
    return Path(str(resources.files("tnb") / "data" / BUNDLED_FILE))


def _is_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and Path(source).suffix.lower() not in BUILDERS


def corpus_name(source: str | None = None, hub_config: str | None = None) -> str:
    """Short, partition-safe name of a corpus source.

    ``None`` -> ``"enwiki_sample"``; a file -> its stem (``"wiki.parquet"`` -> ``"wiki"``);
    a directory -> its name; a hub id -> id and config, sanitized
    (``"wikimedia/wikipedia", "20231101.en"`` -> ``"wikimedia_wikipedia.20231101.en"``).
    """
    if source is None:
        return BUNDLED_NAME
    path = Path(source).expanduser()
    if path.exists() or not _is_hub_id(source):
        return sanitize_value(path.stem if path.is_file() or path.suffix.lower() in BUILDERS else path.name)
    return sanitize_value(source if hub_config is None else f"{source}.{hub_config}")


def _local_data_files(path: Path) -> tuple[str, list[str]]:
    """The ``datasets`` builder and the files to read for a local file or directory."""
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise CorpusError(
                f"Cannot read corpus file {str(path)!r}: its suffix should be one of "
                f"{', '.join(sorted(BUILDERS))}. Got {path.suffix or 'none'!r} instead."
            )
        return builder, [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
    builders = sorted({BUILDERS[p.suffix.lower()] for p in files})
    if not builders:
        raise CorpusError(f"Corpus directory {str(path)!r} holds no {', '.join(sorted(BUILDERS))} files.")
    if len(builders) > 1:
        raise CorpusError(
            f"Corpus directory {str(path)!r} mixes file kinds ({', '.join(builders)}); put one kind in a directory."
        )
    return builders[0], [str(p) for p in files]


def _bundled_rows(text_column: str) -> tuple[list[str], Iterator[dict[str, Any]]]:
    parquet = pq.ParquetFile(bundled_corpus_path())
    columns = parquet.schema_arrow.names
    wanted = [name for name in (text_column, "title") if name in columns]

    def rows() -> Iterator[dict[str, Any]]:
        for batch in parquet.iter_batches(batch_size=16, columns=wanted):
            yield from batch.to_pylist()

    return columns, rows()


def _datasets_rows(
    source: str, hub_config: str | None, split: str, txt_sample_by: TxtSampleBy
) -> tuple[list[str] | None, Iterator[dict[str, Any]]]:
    import datasets  # slow import: only when a non-bundled source is asked for

    # datasets logs a JSON file it cannot parse, then raises; tnb reports it once, as a CorpusError
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    path = Path(source).expanduser()
    try:
        if path.exists():
            builder, data_files = _local_data_files(path)
            if builder == "parquet" and all(pq.ParquetFile(file).metadata.num_rows == 0 for file in data_files):
                # datasets fails on a Parquet file without rows ("BatchSize must be greater than 0")
                return pq.ParquetFile(data_files[0]).schema_arrow.names, iter(())
            options: dict[str, Any] = {"sample_by": txt_sample_by} if builder == "text" else {}
            with _offline(datasets):  # a local file: no hub look-up, no download-count ping
                dataset = datasets.load_dataset(builder, data_files=data_files, split="train", streaming=True, **options)
        else:
            dataset = datasets.load_dataset(source, hub_config, split=split, streaming=True)
        return dataset.column_names, iter(dataset)
    except CorpusError:
        raise
    except Exception as error:  # datasets raises many kinds; the user needs one line
        hint = "" if path.exists() else " (a hub dataset needs the network or the HF cache; or pass a local file)"
        raise CorpusError(f"Cannot load corpus {_describe(source, hub_config)}: {_one_line(error)}{hint}") from error


@contextlib.contextmanager
def _offline(datasets: Any) -> Iterator[None]:
    """``datasets`` offline for the block, whatever the environment says.

    Without ``HF_HUB_OFFLINE``, loading even a local file makes ``datasets`` send a
    download-count request to a remote host (seen with strace).
    """
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS)
    datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = True, False
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved


def _describe(source: str, hub_config: str | None) -> str:
    return repr(source) + (f" (config {hub_config!r})" if hub_config else "")


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0] if message else ''}".rstrip(": ")


def _missing_column(text_column: str, columns: Iterable[str], described: str) -> CorpusError:
    return CorpusError(
        f"Corpus {described} has no text column {text_column!r}; its columns are: {', '.join(columns)}."
    )


def load_corpus(
    source: str | None = None,
    *,
    text_column: str = "text",
    max_documents: int | None = None,
    hub_config: str | None = None,
    split: str = "train",
    txt_sample_by: TxtSampleBy = "paragraph",
) -> Iterator[Document]:
    """Stream the documents of a corpus, lazily, in corpus order.

    Errors in the source (missing file, no such column, no non-empty document) are raised
    here, when this function is called, not later while iterating.

    Parameters
    ----------
    source : str or None
        ``None`` for the bundled Wikipedia sample, a local file or directory, or a hub
        dataset id (see the module docstring).
    text_column : str
        Column holding the text. A ``title`` column, when present, fills ``Document.title``.
    max_documents : int or None
        Stop after this many (non-empty) documents; ``None`` for all.
    hub_config : str or None
        Hub dataset configuration, e.g. ``"20231101.en"``.
    split : str
        Hub dataset split (local files are always one ``train`` split).
    txt_sample_by : {"paragraph", "document", "line"}
        What one document is in a ``.txt`` file.

    Returns
    -------
    Iterator of Document
    """
    if max_documents is not None and max_documents < 1:
        raise CorpusError(f"max_documents should be >= 1 or None. Got {max_documents} instead.")
    if txt_sample_by not in ("paragraph", "document", "line"):
        raise CorpusError(f"txt_sample_by should be 'paragraph', 'document' or 'line'. Got {txt_sample_by!r} instead.")
    columns: list[str] | None  # None: the source cannot say its columns before it is read
    if source is None:
        described = f"{BUNDLED_NAME!r} (bundled)"
        columns, rows = _bundled_rows(text_column)
    else:
        described = _describe(source, hub_config)
        path = Path(source).expanduser()
        if not path.exists() and not _is_hub_id(source):
            raise CorpusError(f"Corpus file or directory {source!r} does not exist.")
        columns, rows = _datasets_rows(source, hub_config, split, txt_sample_by)
    if columns is not None and text_column not in columns:
        raise _missing_column(text_column, columns, described)

    documents = _documents(rows, text_column, described)
    try:
        first = next(documents)  # surface an empty corpus or a bad stream now
    except StopIteration:
        raise CorpusError(f"Corpus {described} is empty: no document has text in column {text_column!r}.") from None
    limited = itertools.chain([first], documents)
    return limited if max_documents is None else itertools.islice(limited, max_documents)


def _documents(rows: Iterator[dict[str, Any]], text_column: str, described: str) -> Iterator[Document]:
    doc_id = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except CorpusError:
            raise
        except Exception as error:  # a hub stream that fails on its first request, a corrupt file
            raise CorpusError(f"Cannot read corpus {described}: {_one_line(error)}") from error
        if text_column not in row:  # JSON sources declare no columns up front
            raise _missing_column(text_column, row, described)
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            continue
        yield Document(doc_id=doc_id, title=str(row.get("title") or ""), text=text.strip())
        doc_id += 1
