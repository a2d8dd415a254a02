"""lmms-eval's command line with an exit status that means something:

    python -m llava.eval.lmms_eval_run --model llava_sparse --model_args pretrained=<ckpt>,method=sparsevlm \
        --tasks mme,pope --batch_size 8 --log_samples --output_path out/

takes exactly lmms-eval's arguments (`accelerate launch -m llava.eval.lmms_eval_run ...` for several GPUs). lmms-eval
0.7.3 prints an evaluation's error and still exits 0 unless `--verbosity DEBUG` is given (an unknown model or task, a
bad `--model_args` key, a model that crashes); here any failed evaluation makes the run exit 1 after lmms-eval's own
report (its traceback, then one `error:` line), so scripts and CI notice.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    import lmms_eval.__main__ as lmms_main
    from lmms_eval.cli.dispatch import main as dispatch_main

    failures: list[BaseException] = []
    evaluate_one = lmms_main.cli_evaluate_single

    def recording(args=None):  # lmms-eval's cli_evaluate catches what this raises, logs it and carries on
        try:
            return evaluate_one(args)
        except Exception as err:
            failures.append(err)
            raise

    # lmms-eval 0.7.3's loop over evaluations calls this module global; tests/test_lmms_eval.py checks the wrapper
    lmms_main.cli_evaluate_single = recording
    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    try:
        dispatch_main()
    finally:
        lmms_main.cli_evaluate_single = evaluate_one
    if failures:
        reasons = "; ".join(f"{type(err).__name__}: {err}" for err in failures)
        raise SystemExit(f"error: lmms-eval: {len(failures)} evaluation(s) failed: {' '.join(reasons.split())}")


if __name__ == "__main__":
    from llava.cli import run_cli

    run_cli(main)
