"""Convert a MediaWiki XML dump excerpt into tnb's bundled Wikipedia sample.

Reads a ``pages-articles`` XML dump (``.xml`` or ``.xml.bz2``), keeps the main
namespace articles in dump order, drops redirects, turns their wikitext into
plain text with ``mwparserfromhell``, and writes a Parquet file with the schema
of the ``wikimedia/wikipedia`` dataset (``id, url, title, text``, all strings).

The cleaning follows the script that built the ``wikipedia`` / ``wikimedia/wikipedia``
datasets (``_parse_and_clean_wikicode``): parse, drop file/image links, ``<ref>``
and table tags, then ``strip_code()`` section by section (which drops templates,
comments and invisible tags such as ``<math>``, keeps link text and heading text)
and join the sections with a blank line. Unlike that script, category links are
dropped rather than kept as bare names, and whitespace is tidied (no runs of
spaces, at most one blank line, no blank sections).

Usage::

    python scripts/make_enwiki_sample.py [DUMP] [--out tnb/data/enwiki_sample.parquet]

Needs ``mwparserfromhell`` (``pip install -e .[convert]``); tnb itself does not.
"""

from __future__ import annotations

import argparse
import bz2
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import mwparserfromhell
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_DUMP = Path("/work/shared/data/enwiki-first-articles.xml.bz2")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tnb" / "data" / "enwiki_sample.parquet"
URL_TEMPLATE = "https://en.wikipedia.org/wiki?curid={id}"

SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("title", pa.string()), ("text", pa.string())])

_MEDIA_LINK = re.compile(r"^\s*:?\s*(?:File|Image|Media)\s*:", re.IGNORECASE)
_CATEGORY_LINK = re.compile(r"^\s*(?:Category)\s*:", re.IGNORECASE)
_DROPPED_TAGS = frozenset({"ref", "table", "gallery", "references", "math", "score", "timeline", "imagemap"})
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_EMPTY_PARENS = re.compile(r"\s*\(\s*[,;]?\s*\)")  # "( )" left behind by stripped templates
# Markup the parser leaves as text when the wikitext around it is unbalanced (a stray
# ''italic'' quote, an unclosed tag): cleaned up after strip_code by these fallbacks.
_LEFTOVER_REF = re.compile(r"<ref[^>]*?/>|<ref[^>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_LEFTOVER_TABLE = re.compile(r"^\{\|.*?\|\}", re.DOTALL | re.MULTILINE)
_LEFTOVER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_LEFTOVER_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_LEFTOVER_HTML = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_BOLD_ITALIC = re.compile(r"'{2,}")


def _local(tag: str) -> str:
    """Element name without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def iter_pages(stream: IO[bytes]) -> Iterator[dict[str, str | bool]]:
    """Yield each ``<page>`` of a dump as ``{id, title, ns, redirect, text}``, in dump order."""
    for _event, element in ET.iterparse(stream, events=("end",)):
        if _local(element.tag) != "page":
            continue
        page: dict[str, str | bool] = {"redirect": False, "text": ""}
        for child in element:
            name = _local(child.tag)
            if name in ("id", "title", "ns"):
                page[name] = (child.text or "").strip()
            elif name == "redirect":
                page["redirect"] = True
            elif name == "revision":
                text = next((c for c in child if _local(c.tag) == "text"), None)
                page["text"] = (text.text or "") if text is not None else ""
        element.clear()  # bounded memory on a full dump
        yield page


def _is_link_to_drop(link: mwparserfromhell.nodes.Wikilink) -> bool:
    title = str(link.title)
    return bool(_MEDIA_LINK.match(title) or _CATEGORY_LINK.match(title))


def _remove(section: mwparserfromhell.wikicode.Wikicode, node: object) -> None:
    try:
        section.remove(node)
    except ValueError:  # already gone with an enclosing node
        pass


def _leftover_link(match: re.Match[str]) -> str:
    title, label = match.group(1), match.group(2)
    if _MEDIA_LINK.match(title) or _CATEGORY_LINK.match(title):
        return ""
    return (label if label is not None else title).rsplit("|", 1)[-1]


def _remove_leftover_markup(text: str) -> str:
    text = _LEFTOVER_REF.sub("", text)
    text = _LEFTOVER_TABLE.sub("", text)
    for pattern, replacement in ((_LEFTOVER_TEMPLATE, ""), (_LEFTOVER_LINK, _leftover_link)):
        previous = None
        while previous != text:  # innermost first, so nested markup goes too
            previous, text = text, pattern.sub(replacement, text)
    text = _LEFTOVER_HTML.sub("", text)
    return _BOLD_ITALIC.sub("", text)


def tidy(text: str) -> str:
    """Drop leftover markup, collapse whitespace: single spaces, trimmed lines, one blank line."""
    text = _remove_leftover_markup(_MAGIC_WORD.sub("", text))
    text = _EMPTY_PARENS.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r" +([,.;:])", r"\1", text)  # "word ," left where a ref or template was
    return _BLANK_LINES.sub("\n\n", text).strip()


def wikitext_to_plain(wikitext: str) -> str:
    """Plain text of one article: no templates, refs, tables, files, categories or markup."""
    wikicode = mwparserfromhell.parse(wikitext)
    sections = []
    for section in wikicode.get_sections(flat=True, include_lead=True, include_headings=True):
        for link in section.filter_wikilinks(recursive=True):
            if _is_link_to_drop(link):
                _remove(section, link)
        for tag in section.filter_tags(recursive=True, matches=lambda node: str(node.tag).lower() in _DROPPED_TAGS):
            _remove(section, tag)
        plain = tidy(section.strip_code(normalize=True, collapse=True))
        if plain:
            sections.append(plain)
    return "\n\n".join(sections)


def convert(dump: Path) -> pa.Table:
    """Every main-namespace, non-redirect article of ``dump`` as a ``wikimedia/wikipedia`` table."""
    opener = bz2.open if dump.suffix == ".bz2" else open
    rows: dict[str, list[str]] = {name: [] for name in SCHEMA.names}
    with opener(dump, "rb") as stream:
        for page in iter_pages(stream):
            wikitext = str(page["text"])
            if page["ns"] != "0" or page["redirect"] or wikitext.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = wikitext_to_plain(wikitext)
            if not text:
                continue
            rows["id"].append(str(page["id"]))
            rows["url"].append(URL_TEMPLATE.format(id=page["id"]))
            rows["title"].append(str(page["title"]))
            rows["text"].append(text)
    return pa.Table.from_pydict(rows, schema=SCHEMA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dump", nargs="?", type=Path, default=DEFAULT_DUMP, help="MediaWiki XML dump (.xml or .xml.bz2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Parquet file to write")
    args = parser.parse_args(argv)
    if not args.dump.is_file():
        print(f"error: no such dump file: {args.dump}", file=sys.stderr)
        return 1
    table = convert(args.dump)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out, compression="zstd", compression_level=19)
    n_chars = sum(len(text) for text in table.column("text").to_pylist())
    print(f"wrote {table.num_rows} articles, {n_chars:,} characters, {args.out.stat().st_size:,} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
