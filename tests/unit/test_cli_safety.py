"""Issue 20: a run never overwrites work without --force, checks its output path before any work, and every
bad input is one ``error:`` line (no traceback) with exit 2. Each case fails before data, models, Ray or an
engine load: files named in ``files`` are made in tmp_path first and must be byte-for-byte unchanged after."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rayalign
from rayalign.cli import main

ROOT = Path(rayalign.__file__).resolve().parent.parent
DIR = object()  # a directory (with one file in it) where ``files`` says so
RESULTS = json.dumps({"model": "a", "tasks": {"t": {"kind": "generate", "accuracy": 0.5, "n": 2}}})
EVAL = json.dumps({"model": {"name_or_path": "no-such-model"}, "output_dir": "ev",
                   "tasks": [{"name": "t", "kind": "generate", "task": "letter_count"}]})
JUDGE = "base_url: http://127.0.0.1:9/v1\nmodel_name: x\ncache: null\n"
ROWS = '{"prompt": "p", "response": "r"}\n'
SAMPLES = '{"prompt": "p", "answer": "1", "responses": ["\\\\boxed{1}", "\\\\boxed{2}"]}\n'

# id, files made first, argv, exit code, what the one error line must contain
CASES = [
    ("make-over-file", {"d.jsonl": "keep\n"}, ["data", "make", "letter_count", "--n", "3", "--out", "d.jsonl"],
     2, "d.jsonl already exists (--out, 5 bytes); pass --force to replace it"),
    ("make-into-dir", {"d": DIR}, ["data", "make", "letter_count", "--n", "3", "--out", "d"],
     2, "--out: d is a directory; give a file path"),
    ("make-parent-is-file", {"f": "x"}, ["data", "make", "letter_count", "--n", "3", "--out", "f/d.jsonl"],
     2, "--out: f is a file, not a directory"),
    ("pairs-over-file", {"s.jsonl": SAMPLES, "p.jsonl": "keep\n"}, ["data", "pairs", "s.jsonl", "--out", "p.jsonl"],
     2, "p.jsonl already exists (--out"),
    ("tiny-over-model", {"m": DIR}, ["models", "create-tiny", "m"],
     2, "m already exists (OUT, a directory of 1 entry); pass --force to replace it"),
    ("tiny-over-file", {"m": "x"}, ["models", "create-tiny", "m", "--force"], 2, "OUT: m is a file, not a directory"),
    ("infer-over-file", {"in.jsonl": ROWS, "o.jsonl": "keep\n"},
     ["infer", "--model", "no-such-model", "-i", "in.jsonl", "-o", "o.jsonl"], 2, "o.jsonl already exists (--output"),
    ("infer-parent-is-file", {"in.jsonl": ROWS, "f": "x"},
     ["infer", "--model", "no-such-model", "-i", "in.jsonl", "-o", "f/o.jsonl"], 2, "--output: f is a file"),
    ("judge-over-file", {"j.yaml": JUDGE, "in.jsonl": ROWS, "o.jsonl": "keep\n"},
     ["judge", "-c", "j.yaml", "-i", "in.jsonl", "-o", "o.jsonl"], 2, "o.jsonl already exists (--output"),
    ("judge-into-dir", {"j.yaml": JUDGE, "in.jsonl": ROWS, "o": DIR},
     ["judge", "-c", "j.yaml", "-i", "in.jsonl", "-o", "o"], 2, "--output: o is a directory"),
    ("compare-over-file", {"o.jsonl": "keep\n"},
     ["compare", "no-such-a", "no-such-b", "--engine", "hf", "-o", "o.jsonl"], 2, "o.jsonl already exists (--output"),
    ("infer-output-interactive", {}, ["infer", "--model", "m", "-I", "-o", "o.jsonl"],
     2, "--output goes with --input FILE, not --interactive"),
    ("compare-output-interactive", {}, ["compare", "a", "b", "-I", "-o", "o.jsonl"],
     2, "--output goes with fixed prompts"),
    ("eval-over-results", {"e.yaml": EVAL, "ev/results.json": RESULTS}, ["evaluate", "-c", "e.yaml"],
     2, "ev/results.json already exists (output_dir"),
    ("eval-output-dir-is-file", {"e.yaml": EVAL, "ev": "x"}, ["evaluate", "-c", "e.yaml"],
     2, "output_dir: ev is a file, not a directory"),
    ("compare-missing", {"a.json": RESULTS}, ["evaluate", "--compare", "a.json", "nope.json"],
     2, "nope.json: results file not found"),
    ("compare-dir", {"a.json": RESULTS, "d": DIR}, ["evaluate", "--compare", "a.json", "d"],
     2, "d: a directory, not a results file"),
    ("compare-not-json", {"a.json": RESULTS, "b.json": "not json"}, ["evaluate", "--compare", "a.json", "b.json"],
     2, "b.json: not a results file (invalid JSON"),
    ("compare-not-results", {"a.json": RESULTS, "b.json": '{"model": "b"}'},
     ["evaluate", "--compare", "a.json", "b.json"], 2, "b.json: not a results file of 'rayalign evaluate'"),
    ("compare-binary", {"a.json": RESULTS, "b.json": b"\xff\xfe\x00"}, ["evaluate", "--compare", "a.json", "b.json"],
     2, "b.json: not a results file (not UTF-8"),
    ("plot-over-file", {"a.json": RESULTS, "p.png": "keep"},
     ["evaluate", "--compare", "a.json", "a.json", "--plot", "p.png"], 2, "p.png already exists (--plot"),
    ("plot-parent-is-file", {"a.json": RESULTS, "f": "x"},
     ["evaluate", "--compare", "a.json", "a.json", "--plot", "f/p.png"], 2, "--plot: f is a file"),
    ("plot-bad-suffix", {"a.json": RESULTS}, ["evaluate", "--compare", "a.json", "a.json", "--plot", "p.txt"],
     2, "--plot: p.txt: give a .png, .pdf or .svg file"),
    ("plot-without-compare", {"e.yaml": EVAL}, ["evaluate", "-c", "e.yaml", "--plot", "p.png"],
     2, "--plot goes with --compare"),
    ("config-missing", {}, ["config", "explain", "-c", "nope.yaml"], 2, "nope.yaml: config file not found"),
    ("config-is-dir", {"c": DIR}, ["config", "explain", "-c", "c"], 2, "c: a directory, not a config file"),
]
# usage errors (typer's click) and a few of the above, as a user's shell runs them
SUBPROCESS = [
    ("trian", {}, ["trian"], 2, "No such command 'trian'"),
    ("train-without-config", {}, ["train"], 2, "Missing option '-c' / '--config'"),
    ("make-n-0", {}, ["data", "make", "letter_count", "--n", "0", "-o", "x.jsonl"], 2, "Invalid value for '--n'"),
    ("tiny-hidden-10", {}, ["models", "create-tiny", "out", "--hidden", "10"], 2, "Invalid value for '--hidden'"),
    ("no-command", {}, [], 2, "missing command"),
    ("train-config-missing", {}, ["train", "-c", "nope.yaml"], 2, "nope.yaml: config file not found"),
    ("train-config-dir", {"c": DIR}, ["train", "-c", "c"], 2, "c: a directory, not a config file"),
    ("make-over-file", *CASES[0][1:]),
    ("tiny-over-model", *CASES[4][1:]),
]


def make(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
            (path / "model.safetensors").write_text("weights")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def snapshot(tmp_path: Path) -> dict[str, str]:
    return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*")) if p.is_file()}


def check(code, out, err, expected_code, expected, before, tmp_path):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert snapshot(tmp_path) == before  # nothing replaced, nothing half-written


@pytest.mark.parametrize("files, argv, code, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line(files, argv, code, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # were a case to get as far as Ray, it must not start one
    make(tmp_path, files)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    check(info.value.code, out, err, code, expected, before, tmp_path)


@pytest.mark.parametrize("files, argv, code, expected", [c[1:] for c in SUBPROCESS], ids=[c[0] for c in SUBPROCESS])
def test_refused_in_one_line_from_the_shell(files, argv, code, expected, tmp_path):
    make(tmp_path, files)
    before = snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "rayalign.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    check(done.returncode, done.stdout if argv else "", done.stderr, code, expected, before, tmp_path)


def test_force_replaces_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("old\n")
    with pytest.raises(SystemExit) as info:
        main(["data", "make", "letter_count", "--n", "3", "--out", "d.jsonl", "--force"])
    assert info.value.code == 0 and len((tmp_path / "d.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    (tmp_path / "a.json").write_text(RESULTS)
    (tmp_path / "p.png").write_text("old")
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--compare", "a.json", "a.json", "--plot", "p.png", "--force"])
    assert info.value.code == 0 and (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote p.png" in capsys.readouterr().out


def test_unwritable_directory_is_refused_before_work(tmp_path, monkeypatch):
    """What a read-only directory does (faked: this suite may run as root, which writes anywhere)."""
    import tempfile

    from rayalign.errors import UserError
    from rayalign.outputs import check_file

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(UserError, match=f"^--output: cannot write in {tmp_path}: Permission denied$"):
        check_file(tmp_path / "o.jsonl", "--output", force=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_for_real(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit) as info:
        main(["data", "make", "letter_count", "--n", "3", "--out", "ro/d.jsonl"])
    assert info.value.code == 2 and "--out: cannot write in ro" in capsys.readouterr().err


def test_a_failed_write_keeps_the_old_file(tmp_path):
    from rayalign.outputs import staged

    target = tmp_path / "o.jsonl"
    target.write_text("good\n")
    with pytest.raises(RuntimeError), staged(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "good\n" and sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]


def test_staged_directory_replaces_the_old_one_whole(tmp_path):
    from rayalign.outputs import staged

    old = tmp_path / "m"
    old.mkdir()
    (old / "stale.bin").write_text("x")
    with staged(old) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in old.iterdir()) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


class NoModel:
    def __init__(self, cfg):
        self.cfg = cfg

    def close(self):
        pass


@pytest.mark.parametrize("tasks, code, last", [
    ({"judged": {"judge_score": math.nan, "n": 4, "unparsed": 4}}, 1,
     "error: no task scored an example: judged (4 of 4 verdicts unparsed)"),
    ({"judged": {"judge_score": math.nan, "n": 4, "unparsed": 4}, "t": {"accuracy": 0.5, "n": 4}}, 0,
     "warning: task judged (4 of 4 verdicts unparsed) scored no example"),
])
def test_an_evaluation_that_scored_nothing_fails(tasks, code, last, tmp_path, monkeypatch, capsys):
    from rayalign.evaluate import run as evaluate_run

    monkeypatch.setattr(evaluate_run, "Subject", NoModel)
    monkeypatch.setattr(evaluate_run, "run_task", lambda subject, task: dict(tasks[task.name]))
    cfg = {"model": {"name_or_path": "m"}, "output_dir": str(tmp_path / "ev"),
           "tasks": [{"name": name, "kind": "generate", "task": "letter_count"} for name in tasks]}
    (tmp_path / "e.yaml").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "-c", str(tmp_path / "e.yaml")])
    out, err = capsys.readouterr()
    assert info.value.code == code
    assert (err if code else out).strip().splitlines()[-1] == last
    assert set(json.loads((tmp_path / "ev" / "results.json").read_text())["tasks"]) == set(tasks)  # kept
