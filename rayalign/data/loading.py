"""Validated datasets: every row checked before any training starts; weighted mixtures.

``load_split`` stops at the first bad row with ``path:line: field 'x' ...``; an empty source is an
error, never a silent 0-step run. ``validate_file`` checks a whole file and reports every bad row.
Mixtures use ``datasets.interleave_datasets`` with the normalised weights as sampling probabilities.
Each row's ``file:line`` rides along in a hidden column, so a later stage (tokenisation dropping an
over-long row) can still name it after mixing and shuffling: ``row_location``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets

from rayalign.config import DatasetSource, DataSplitConfig
from rayalign.data import images
from rayalign.data.formats import VL_FORMATS, as_parts, check_row, image_parts
from rayalign.data.sources import BadJSON, iter_rows
from rayalign.errors import DataError

WHERE = "__rayalign_location__"  # hidden column: the row's file:line


def _row_problem(row, fmt: str) -> str | None:
    if isinstance(row, BadJSON):
        return row.message
    problems = check_row(row, fmt)
    if not problems:
        return None
    fieldname, problem = problems[0]
    more = f" (+{len(problems) - 1} more in this row)" if len(problems) > 1 else ""
    return f"field '{fieldname}' {problem}{more}"


def _checked(row, fmt: str, base: Path) -> tuple[dict, str | None]:
    """(the row as it is loaded, its first problem or None). A vision-language row also has every image read (paths
    against ``base``, the data file's folder) and its paths made absolute, for workers that run elsewhere."""
    problem = _row_problem(row, fmt)
    if problem is not None or fmt not in VL_FORMATS:
        return row, problem
    row = as_parts(row, fmt)
    for at, part in image_parts(row, fmt):
        problem = images.problem(part["image"], base)
        if problem:
            return row, f"field '{at}.image' {problem}"
        part["image"] = images.absolute(part["image"], base)
    return row, None


def load_source(source: DatasetSource, fmt: str) -> datasets.Dataset:
    """All rows of one source, validated as ``fmt``, with their locations (column ``WHERE``); raises on
    the first bad row."""
    rows, where = [], []
    for location, row in iter_rows(source.path, source.split, source.revision):
        row, problem = _checked(row, fmt, Path(source.path).parent)
        if problem:
            raise DataError(f"{location}: {problem} (format '{fmt}'; "
                            f"`rayalign data validate {source.path} --format {fmt}` lists every bad row)")
        rows.append(row)
        where.append(location)
        if source.limit is not None and len(rows) >= source.limit:
            break
    if not rows:
        raise DataError(f"{source.path}: dataset is empty (no rows to train on)")
    try:
        return datasets.Dataset.from_list(rows).add_column(WHERE, where)
    except Exception as exc:  # pyarrow: a column holding different types in different rows
        raise DataError(f"{source.path}: rows disagree on a field's type ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]}); use one form per field within a file") from None


def load_split(split: DataSplitConfig, seed: int = 42) -> datasets.Dataset:
    """The mixed, optionally shuffled dataset of one split (train or eval); rows read without their
    location column (``row_location`` reads it)."""
    parts = [load_source(src, split.format) for src in split.datasets]
    if len(parts) == 1:
        ds = parts[0]
    else:
        total = sum(src.weight for src in split.datasets)
        try:
            ds = datasets.interleave_datasets(
                parts, probabilities=[src.weight / total for src in split.datasets], seed=seed,
                stopping_strategy=split.mixture,
            )
        except ValueError as exc:
            names = ", ".join(src.path for src in split.datasets)
            raise DataError(f"cannot mix {names}: {str(exc).splitlines()[0]}") from None
    ds = ds.shuffle(seed=seed) if split.shuffle else ds
    return ds.with_format(columns=[c for c in ds.column_names if c != WHERE])


def row_location(rows, index: int) -> str:
    """``file:line`` of row ``index`` of a ``load_split`` dataset; ``row N`` for rows from elsewhere."""
    if isinstance(rows, datasets.Dataset) and WHERE in rows.column_names:
        return rows.with_format(columns=[WHERE])[index][WHERE]
    return f"row {index + 1}"


@dataclass
class ValidationReport:
    path: str
    format: str
    rows: int = 0
    bad: list[str] = field(default_factory=list)  # first `max_report` "location: problem" lines
    bad_count: int = 0

    @property
    def ok(self) -> bool:
        return self.bad_count == 0 and self.rows > 0


def validate_file(path: str, fmt: str, max_report: int = 20, split: str = "train") -> ValidationReport:
    """Check every row of ``path``; keep the first ``max_report`` problems with their locations."""
    report = ValidationReport(path, fmt)
    for location, row in iter_rows(path, split):
        report.rows += 1
        _, problem = _checked(row, fmt, Path(path).parent)
        if problem:
            report.bad_count += 1
            if len(report.bad) < max_report:
                report.bad.append(f"{location}: {problem}")
    return report
