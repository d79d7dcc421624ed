"""Why a vLLM engine died, carried to where the user looks.

The serving engine (``AsyncLLM``) runs its engine core in a process of its own. When it fails, it logs
the exception in that process (which, under Ray, is only a worker log file) and the client side raises
``EngineDeadError: ... See stack trace (above) for the root cause`` with nothing above it. So each
engine gets an error file: :func:`record_errors` (a vLLM general plugin, loaded by vLLM in every one
of its processes, registered in ``pyproject.toml``) appends one JSON line per exception vLLM logs,
and :func:`root_cause` turns the first of them into one line: the exception and the frame it came
from, e.g. ``RuntimeError: CPU Generator does not use offset (vllm/v1/worker/gpu_model_runner.py:3502,
in _bookkeeping_sync; in EngineCore)``. The batch engine runs in the caller's process: its exceptions
arrive whole, and :func:`one_line` gives the same line.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import traceback
from pathlib import Path

ENV = "RAYALIGN_ENGINE_ERRORS"  # the error file of the engine being started; inherited by its processes


def new_error_file() -> Path:
    """A fresh error file for an engine about to start; its processes inherit the path."""
    fd, path = tempfile.mkstemp(prefix="rayalign-engine-", suffix=".jsonl")
    os.close(fd)
    os.environ[ENV] = path
    return Path(path)


def describe(exc: BaseException) -> tuple[str, str]:
    """The innermost exception of a chain (where it began) as "Type: message" and the frame it was
    raised in, "path/in/site-packages.py:line, in function" ("" without a traceback)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        path = frames[-1].filename.split("site-packages/", 1)[-1]
        where = f"{path}:{frames[-1].lineno}, in {frames[-1].name}"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1], where


def one_line(exc: BaseException) -> str:
    """:func:`describe` as one line: ``RuntimeError: boom (vllm/x.py:12, in f)``."""
    error, where = describe(exc)
    return f"{error} ({where})" if where else error


class _ErrorFile(logging.Handler):
    def __init__(self, path: str):
        super().__init__(logging.ERROR)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        if not record.exc_info or record.exc_info[1] is None:
            return
        error, where = describe(record.exc_info[1])
        line = {"error": error, "where": where, "process": record.processName, "message": record.getMessage()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def record_errors() -> None:
    """The vLLM plugin: in a process started for an engine with an error file, log exceptions into it."""
    path = os.environ.get(ENV)
    logger = logging.getLogger("vllm")
    if path and not any(isinstance(h, _ErrorFile) for h in logger.handlers):
        logger.addHandler(_ErrorFile(path))


def root_cause(path: Path) -> str:
    """One line: the first exception the engine's processes logged, or what it means when there is none."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        lines = []
    if not lines:
        return ("its processes exited without logging an error (killed from outside: a signal, or the "
                "out-of-memory killer)")
    first = lines[0]
    where = f" ({first['where']}; in {first['process']})" if first["where"] else ""
    return f"{first['error']}{where}"
