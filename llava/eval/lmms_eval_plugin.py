"""lmms-eval's entry point into this package: registers `--model llava_sparse` (`llava.eval.lmms_eval_adapter`).

pyproject.toml names `manifests` in the `lmms_eval.models` entry-point group; lmms-eval imports this module on every
start, so it stays light: the adapter (torch, the model code) is only imported when the model is built.
"""

from __future__ import annotations

MODEL_ID = "llava_sparse"  # never "llava": that would replace lmms-eval's own LLaVA wrapper


def manifests() -> list:
    """The model lmms-eval should know under MODEL_ID: a simple (not chat) model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path="llava.eval.lmms_eval_adapter.LlavaSparse")]
