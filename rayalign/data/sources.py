"""Reading rows from a source with a location for each: ``file.jsonl:LINE`` or ``source:row N``.

Sources: local JSONL / JSON / Parquet files, a dataset saved with ``Dataset.save_to_disk``, or an HF
hub name (read with ``datasets.load_dataset``; needs network). JSONL is read line by line ourselves
because a user fixing a bad row needs its line number, which ``datasets`` does not keep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from rayalign.errors import DataError


@dataclass(frozen=True)
class BadJSON:
    """A line that is not valid JSON, reported like any other bad row."""

    message: str


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).suffix in {".jsonl", ".json", ".parquet"}


def iter_rows(path: str, split: str = "train", revision: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)``; a row that is not JSON is a :class:`BadJSON`."""
    p = Path(path).expanduser()
    if p.is_file():
        yield from _iter_file(p)
    elif p.is_dir():
        yield from _iter_hf(_load_saved(p, split), str(p))
    elif _looks_local(path):
        raise DataError(f"{path}: no such file or directory")
    else:
        yield from _iter_hf(_load_hub(path, split, revision), path)


def iter_dicts(path: str, split: str = "train") -> Iterator[tuple[str, dict]]:
    """``iter_rows`` for readers that stop at the first bad row: invalid JSON or a non-object row is a
    :class:`DataError` naming its file:line."""
    for where, row in iter_rows(path, split):
        if isinstance(row, BadJSON):
            raise DataError(f"{where}: {row.message}")
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object")
        yield where, row


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> tuple[int, str]:
    """(line within ``raw``, "not UTF-8 (byte 0xff at column 5)") for the first byte that does not decode."""
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    column = len(raw[line_start:exc.start].decode("utf-8", "replace")) + 1
    return raw.count(b"\n", 0, exc.start) + 1, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {column})"


def _iter_jsonl(p: Path) -> Iterator[tuple[str, Any]]:
    """Line by line, as bytes: a line that is not UTF-8 is a bad row like one that is not JSON."""
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield f"{p}:{lineno}", BadJSON(_not_utf8(raw, exc)[1])
                continue
            if not line.strip():
                continue
            try:
                yield f"{p}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{p}:{lineno}", BadJSON(f"invalid JSON: {exc.msg} at column {exc.colno}")


def _iter_json(p: Path) -> Iterator[tuple[str, Any]]:
    raw = p.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line, problem = _not_utf8(raw, exc)
        raise DataError(f"{p}:{line}: {problem}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{p}: a .json dataset must be a list of row objects")
    for i, row in enumerate(data):
        yield f"{p}:row {i + 1}", row


def _iter_parquet(p: Path) -> Iterator[tuple[str, Any]]:
    """Batch by batch with pyarrow (no copy into the HF cache); a file that is not Parquet is one line."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(p).iter_batches()
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield f"{p}:row {n}", row
    except (pyarrow.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: not a readable Parquet file ({first})") from None


def _iter_file(p: Path) -> Iterator[tuple[str, Any]]:
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}
    suffix = p.suffix.lower()
    if suffix not in readers:
        raise DataError(f"{p}: unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")
    yield from readers[suffix](p)


def _load_saved(p: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError:
        raise DataError(f"{p}: a directory that is not a saved HF dataset (save_to_disk)") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{p}: no split '{split}' (has: {', '.join(ds)})")
        ds = ds[split]
    return ds


def _load_hub(name: str, split: str, revision: str | None):
    import datasets

    try:  # revision None: the hub's default branch, as it is today
        return datasets.load_dataset(name, split=split, revision=revision)
    except Exception as exc:  # the hub raises many types: offline, missing, gated
        raise DataError(f"{name}: could not load from the HF hub ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _iter_hf(ds, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{label}:row {i + 1}", row
