"""The command-line entry points, run as a user would."""

import subprocess
import sys
from pathlib import Path

import pytest

from llava.eval import run_llava

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_run_llava_answers_about_a_local_image(tiny_llava, capsys):
    args = [
        "--model-path",
        str(tiny_llava),
        "--image-file",
        str(ASSETS / "example.png"),
        "--query",
        "What is shown?",
        "--temperature",
        "0",
        "--max_new_tokens",
        "6",
        "--device",
        "cpu",
    ]
    run_llava.main(args)
    greedy = capsys.readouterr().out
    run_llava.main(args)
    assert capsys.readouterr().out == greedy and greedy.strip()


def test_run_llava_prompt_places_images():
    prompt = run_llava.build_prompt("Compare <image-placeholder> and <image-placeholder>.", "vicuna_v1", False)
    assert prompt.endswith("USER: Compare <image> and <image>. ASSISTANT:")
    assert run_llava.build_prompt("Q", "vicuna_v1", True).endswith("USER: <im_start><image><im_end>\nQ ASSISTANT:")


def test_run_llava_url_offline_gives_a_clear_error(tiny_llava):
    args = run_llava.build_parser().parse_args(
        ["--model-path", str(tiny_llava), "--image-file", "http://127.0.0.1:9/cat.jpg", "--query", "Q"]
    )
    with pytest.raises(ConnectionError, match="local path"):
        run_llava.eval_model(args, loaded=(None, _Stub(), None, None))


class _Stub:
    class config:  # noqa: N801
        mm_use_im_start_end = False


def test_run_llava_missing_image_file(tiny_llava):
    args = run_llava.build_parser().parse_args(
        ["--model-path", str(tiny_llava), "--image-file", "/nonexistent.png", "--query", "Q"]
    )
    with pytest.raises(FileNotFoundError, match="/nonexistent.png"):
        run_llava.eval_model(args, loaded=(None, _Stub(), None, None))


def test_cli_streams_answers_until_end_of_input(tiny_llava):
    cmd = [
        sys.executable,
        "-m",
        "llava.serve.cli",
        "--model-path",
        str(tiny_llava),
        "--image-file",
        str(ASSETS / "example.png"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        "--device",
        "cpu",
    ]
    result = subprocess.run(cmd, input="hello\nwhat now?\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("USER: ") == 3 and out.count("ASSISTANT: ") == 2 and out.rstrip().endswith("exit...")
    first_answer = out.split("ASSISTANT: ")[1].split("\nUSER:")[0]
    assert first_answer.strip()
