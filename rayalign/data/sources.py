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


def iter_rows(path: str, split: str = "train") -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)``; a row that is not JSON is a :class:`BadJSON`."""
    p = Path(path).expanduser()
    if p.is_file():
        yield from _iter_file(p)
    elif p.is_dir():
        yield from _iter_hf(_load_saved(p, split), str(p))
    elif _looks_local(path):
        raise DataError(f"{path}: no such file or directory")
    else:
        yield from _iter_hf(_load_hub(path, split), path)


def iter_dicts(path: str, split: str = "train") -> Iterator[tuple[str, dict]]:
    """``iter_rows`` for readers that stop at the first bad row: invalid JSON or a non-object row is a
    :class:`DataError` naming its file:line."""
    for where, row in iter_rows(path, split):
        if isinstance(row, BadJSON):
            raise DataError(f"{where}: {row.message}")
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be a JSON object")
        yield where, row


def _iter_file(p: Path) -> Iterator[tuple[str, Any]]:
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{p}:{lineno}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{p}:{lineno}", BadJSON(f"invalid JSON: {exc.msg} at column {exc.colno}")
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{p}: a .json dataset must be a list of row objects")
        for i, row in enumerate(data):
            yield f"{p}:row {i + 1}", row
    elif suffix == ".parquet":
        import datasets

        yield from _iter_hf(datasets.Dataset.from_parquet(str(p)), str(p))
    else:
        raise DataError(f"{p}: unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")


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


def _load_hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub raises many types: offline, missing, gated
        raise DataError(f"{name}: could not load from the HF hub ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _iter_hf(ds, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{label}:row {i + 1}", row
