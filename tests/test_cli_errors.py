"""Entry points report a user's mistake as one `error:` line and exit status 2 (tracebacks with --debug or
LLAVA_DEBUG=1); a bug keeps its traceback."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llava import cli
from llava.eval import model_vqa, run_llava

from .helpers import random_image

ROOT = Path(__file__).resolve().parents[1]


def _python(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env)


def _assert_user_error(stderr: str, pattern: str):
    """One `error:` line, last (progress bars may come before it), saying `pattern`; no traceback."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in stderr


SUBPROCESS_CASES = [  # (module, argv, what the error line says): one kind of bad input each
    (
        "llava.eval.model_vqa",
        ["--model-path", "x", "--question-file", "{tmp}/none.jsonl", "--answers-file", "{tmp}/a.jsonl"],
        "none.jsonl",
    ),
    ("llava.eval.merge_chunks", ["--answers-file", "{tmp}/a.jsonl", "--num-chunks", "2"], "Missing answer chunk"),
    ("llava.synthetic.benchmark", ["score", "--data", "{tmp}/nodata", "--result-file", "{tmp}/r.jsonl"], "nodata"),
]


@pytest.mark.parametrize(("module", "argv", "pattern"), SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_entry_point_user_error(module, argv, pattern, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    result = _python(module, *argv)
    assert result.returncode == 2
    _assert_user_error(result.stderr, pattern)


def test_debug_shows_traceback(tmp_path):
    argv = ["llava.eval.merge_chunks", "--answers-file", str(tmp_path / "a.jsonl"), "--num-chunks", "2"]
    for result in (_python(*argv, "--debug"), _python(*argv, env={"LLAVA_DEBUG": "1"})):
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "FileNotFoundError: Missing answer chunk" in result.stderr


def _run_cli(main, argv, monkeypatch, capsys):
    """`run_cli(main)` in process as `python -m ... argv` runs it: (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    monkeypatch.delenv("LLAVA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(main)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def vqa_argv(tiny_llava, tmp_path):
    def argv(lines: list[str], *extra):
        random_image(0).save(tmp_path / "0.png")
        (tmp_path / "q.jsonl").write_text("".join(line + "\n" for line in lines))
        return [
            "--model-path",
            str(tiny_llava),
            "--question-file",
            str(tmp_path / "q.jsonl"),
            "--answers-file",
            str(tmp_path / "a.jsonl"),
            "--image-folder",
            str(tmp_path),
            "--device",
            "cpu",
            "--max_new_tokens",
            "2",
            *extra,
        ]

    return argv


GOOD = json.dumps({"question_id": 0, "image": "0.png", "text": "Hi?"})


@pytest.mark.parametrize(
    ("lines", "extra", "pattern"),
    [
        ([GOOD, "{not json"], [], r"q\.jsonl, line 2: not valid JSON"),
        ([GOOD, json.dumps({"question_id": 1, "image": "0.png"})], [], r"line 2: missing field\(s\) text"),
        ([GOOD], ["--method", "nosuch"], r"Unknown pruning method 'nosuch'"),
        ([GOOD], ["--method", "fastv", "--retained-tokens", "64", "--retained-ratio", "0.5"], "not both"),
        ([GOOD], ["--chunk-idx", "3", "--num-chunks", "2"], r"--chunk-idx 3 must be in 0\.\.1"),
        ([GOOD], ["--method", "fastv", "--retained-tokens", "100000"], r"--retained-tokens 100000 must be in 1\.\."),
        ([GOOD], ["--method", "dycoke"], "prunes video clips only"),
    ],
    ids=["bad-json", "missing-field", "unknown-method", "bad-budget", "bad-chunk", "impossible-budget", "wrong-family"],
)
def test_generator_user_errors(vqa_argv, lines, extra, pattern, monkeypatch, capsys):
    code, err = _run_cli(model_vqa.main, vqa_argv(lines, *extra), monkeypatch, capsys)
    assert code == 2
    _assert_user_error(err, pattern)


@pytest.mark.parametrize(("content", "pattern"), [(None, "Image file not found"), (b"not a png", "cannot identify")])
def test_run_llava_unreadable_image(tiny_llava, tmp_path, content, pattern, monkeypatch, capsys):
    image = tmp_path / "x.png"
    if content is not None:
        image.write_bytes(content)
    argv = ["--model-path", str(tiny_llava), "--image-file", str(image), "--query", "Hi?", "--device", "cpu"]
    code, err = _run_cli(run_llava.main, argv, monkeypatch, capsys)
    assert code == 2
    _assert_user_error(err, pattern)


@pytest.mark.parametrize("error", [KeyError("bug"), ValueError("shape mismatch"), TypeError("bug")])
def test_internal_errors_keep_their_traceback(error, monkeypatch):
    def main():
        raise error

    monkeypatch.setattr(sys, "argv", ["prog"])
    monkeypatch.delenv("LLAVA_DEBUG", raising=False)
    with pytest.raises(type(error)):
        cli.run_cli(main)


def test_user_error_class_and_debug_flag(monkeypatch, capsys):
    def main():
        assert "--debug" not in sys.argv  # the wrapper's flag, not main's
        raise cli.UserError("--budget must be positive")

    code, err = _run_cli(main, [], monkeypatch, capsys)
    assert (code, err) == (2, "error: --budget must be positive\n")
    monkeypatch.setattr(sys, "argv", ["prog", "--debug"])
    with pytest.raises(cli.UserError):
        cli.run_cli(main)


def test_every_entry_point_uses_run_cli():
    for path in sorted((ROOT / "llava").rglob("*.py")):
        source = path.read_text()
        if 'if __name__ == "__main__":' in source:
            block = source.split('if __name__ == "__main__":', 1)[1]
            assert "run_cli(main" in block, path
