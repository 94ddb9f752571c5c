"""Row reading shared by the RLVR-World loaders (:mod:`.text_game`, :mod:`.web_page`).

:func:`iter_rows` reads ``.parquet`` (pyarrow, batch by batch), ``.jsonl`` (one JSON object per line,
blank lines skipped) and ``.json`` (a JSON array of rows, or JSON lines as
``datasets.Dataset.to_json`` writes them) and yields ``(where, row)``, ``where`` being the row's
location ``"<path>:<n>"``: n the 1-based line for JSON lines, the 0-based row index for parquet files
and JSON arrays. :func:`field` looks a (dotted) field up in a row; every error it raises is
``"<where>: missing field 'a.b'"`` or ``"<where>: field 'a.b' must be <kind>, got <what>"``.

A file that cannot be read as its extension says (invalid UTF-8, binary garbage, JSON nested too deep
to parse, a truncated or fake parquet file) raises :class:`DataFileError` naming the file and, where
there is one, the line (JSON lines, JSON arrays) or the first row of the unreadable batch (parquet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

_KINDS = {str: "a str", Mapping: "an object", list: "a list"}
# Errors the open/read of a data file raises that are the user's to fix and are not a problem of the
# file's contents; they pass through unchanged (the CLI already reports them by path).
_PASS_THROUGH = (FileNotFoundError, IsADirectoryError, PermissionError)


class DataFileError(ValueError):
    """A data file that cannot be read as its extension says; the message starts with the file's path
    (and ``:<line>`` or ``:<row>`` where one is known)."""


def iter_rows(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for the rows of ``path``, in file order, at most ``limit`` of them.

    The extension is checked here (ValueError naming ``path``), the file is read lazily as the
    iterator is consumed: a parquet file batch by batch, so stopping early does not read it in full.
    A line or file that is not JSON (or not UTF-8, or nested too deep to parse) raises
    :class:`DataFileError` ``"<where>: invalid JSON (...)"`` / ``"<where>: not UTF-8 (...)"``; a
    parquet file that pyarrow cannot read raises :class:`DataFileError` naming it.
    """
    path = os.fspath(path)
    if path.endswith(".parquet"):
        rows = _rows_parquet(path)
    elif path.endswith((".jsonl", ".json")):
        rows = _rows_json(path)
    else:
        raise ValueError(f"path: expected a .parquet, .jsonl or .json file, got {path!r}")
    return rows if limit is None else _first(rows, limit)


def field(row: Mapping, name: str, where: str, kind: type | None = None, *, required: bool = True) -> Any:
    """``row[a][b]...`` for ``name = "a.b..."``.

    A missing or None field (or parent) raises ``"<where>: missing field '<a.b>'"``, naming the first
    missing part, unless ``required`` is False: then it is None. A parent that is not a mapping, or a
    value that is not a ``kind`` (``str``, ``Mapping`` or ``list``), raises
    ``"<where>: field '<a.b>' must be <kind>, got <what>"``.
    """
    value: Any = row
    parts = name.split(".")
    for i, key in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if i:
            check(value, Mapping, ".".join(parts[:i]), where)
        value = value.get(key)
        if value is None:
            if required:
                raise ValueError(f"{where}: missing field {here!r}")
            return None
    if kind is not None:
        check(value, kind, name, where)
    return value


def check(value: Any, kind: type, name: str, where: str) -> None:
    """ValueError ``"<where>: field '<name>' must be <kind>, got <what>"`` unless ``value`` is a ``kind``."""
    if not isinstance(value, kind):
        what = _KINDS.get(kind, kind.__name__)
        raise ValueError(f"{where}: field {name!r} must be {what}, got {describe(value)}")


def describe(value: Any) -> str:
    """A short description of a value's type for error messages (``"a list of 3"``, ``"int"``)."""
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return type(value).__name__


def plain(value: Any) -> Any:
    """numpy arrays / scalars (as pandas may hand them) -> lists / Python scalars, recursively."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if not isinstance(value, (str, bytes)) and hasattr(value, "tolist"):
        return plain(value.tolist())
    return value


def sft_answer(row: Mapping, where: str, key: str = "answer") -> str | None:
    """The SFT response column ``row[key]`` (verl's ``data.response_key``, default ``answer``).

    None when the row has no such column, it is None, or it is blank (an empty MLE target teaches
    nothing); a value that is not a str raises ValueError naming ``where`` and the field.
    """
    value = field(row, key, where, str, required=False)
    return value if value is not None and value.strip() else None


# ---------------------------------------------------------------------------------------------------


def _first(rows: Iterator[tuple[str, Any]], limit: int) -> Iterator[tuple[str, Any]]:
    if limit <= 0:
        return
    for count, item in enumerate(rows, start=1):
        yield item
        if count >= limit:
            return


def _rows_parquet(path: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq  # lazy: only parquet files need it
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow (or pip install rlvr_fast[data])") from e
    # Batches keep a `limit` from reading a multi-GB file in full; to_pylist gives plain Python objects.
    import pyarrow as pa

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)
    except _PASS_THROUGH:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataFileError(f"{path}: not a readable parquet file ({e})") from None
    index = 0
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataFileError(f"{path}:{index}: unreadable parquet data from this row on ({e})") from None
        if rows is None:
            return
        for row in rows:
            yield f"{path}:{index}", row
            index += 1


def _rows_json(path: str) -> Iterator[tuple[str, Any]]:
    # Binary mode, decoded here: a UTF-8 error then names its line, which a text-mode read cannot.
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if path.endswith(".json") and head.startswith(b"["):
            data = f.read()
            try:
                rows = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                line = data.count(b"\n", 0, e.start) + 1
                raise DataFileError(f"{path}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}: invalid JSON ({e})") from None
            except RecursionError:
                raise DataFileError(f"{path}: invalid JSON (nested too deep to parse)") from None
            for index, row in enumerate(rows):
                yield f"{path}:{index}", row
            return
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFileError(f"{where}: not UTF-8 ({e.reason} at byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFileError(f"{where}: invalid JSON ({e})") from None
            except RecursionError:
                raise DataFileError(f"{where}: invalid JSON (nested too deep to parse)") from None
            yield where, row


__all__ = ["DataFileError", "check", "describe", "field", "iter_rows", "plain", "sft_answer"]
