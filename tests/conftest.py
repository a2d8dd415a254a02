"""Shared fixtures: tiny random checkpoints written once per test session in the real on-disk formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from llava.testing import convert_to_llava_hf, write_tiny_clip, write_tiny_llava

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_clip(tiny_root) -> Path:
    return write_tiny_clip(tiny_root / "clip")


@pytest.fixture(scope="session")
def tiny_llava(tiny_root, tiny_clip) -> Path:
    """Original format, two safetensors shards."""
    return write_tiny_llava(tiny_root / "llava-v1.5-tiny", tiny_clip)


@pytest.fixture(scope="session")
def tiny_llava_bin(tiny_root, tiny_clip) -> Path:
    """Original format, two .bin shards carrying the stray rotary inv_freq buffers (same seed, same weights)."""
    return write_tiny_llava(tiny_root / "llava-v1.5-tiny-bin", tiny_clip, safetensors=False)


@pytest.fixture(scope="session")
def tiny_llava_hf(tiny_root, tiny_llava) -> Path:
    return convert_to_llava_hf(tiny_llava, tiny_root / "llava-1.5-tiny-hf")


@pytest.fixture(scope="session")
def loaded(tiny_llava):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_llava), device="cpu", pruning=None)


@pytest.fixture
def copy_of(tmp_path):
    """Copy a checkpoint folder so that a test may damage it."""

    def _copy(folder: Path) -> Path:
        return Path(shutil.copytree(folder, tmp_path / folder.name))

    return _copy


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_llava_32(tiny_root, tiny_clip) -> Path:
    """LLaVA-7B's layer count (32) and visual token count (576) at tiny width: the pruning schedules' shape."""
    return write_tiny_llava(tiny_root / "llava-v1.5-tiny-32", tiny_clip, num_layers=32, seed=1)


@pytest.fixture(scope="session")
def loaded32(tiny_llava_32):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_llava_32), device="cpu", pruning=None)


@pytest.fixture(scope="session")
def tiny_next(tiny_root, tiny_clip) -> Path:
    """LLaVA-NeXT (1.6) in the original format: anyres, spatial_unpad, fine-tuned tower and image_newline inside."""
    return write_tiny_llava(tiny_root / "llava-v1.6-vicuna-tiny", tiny_clip, next=True, seed=2)


@pytest.fixture(scope="session")
def tiny_next_hf(tiny_root, tiny_next) -> Path:
    """The same weights in the llava-hf LlavaNextForConditionalGeneration layout."""
    return convert_to_llava_hf(tiny_next, tiny_root / "llava-v1.6-vicuna-tiny-hf")


@pytest.fixture(scope="session")
def tiny_next_mistral(tiny_root, tiny_clip) -> Path:
    """LLaVA-1.6-Mistral: `llava_mistral`, Mistral decoder with grouped-query attention (2 KV heads)."""
    folder = tiny_root / "llava-v1.6-mistral-tiny"
    return write_tiny_llava(folder, tiny_clip, next=True, text_family="mistral", num_kv_heads=2, seed=3)


@pytest.fixture(scope="session")
def loaded_next(tiny_next):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_next), device="cpu", pruning=None)


@pytest.fixture(scope="session")
def tiny_next_32(tiny_root, tiny_clip) -> Path:
    """LLaVA-NeXT with LLaVA-7B's 32 layers at tiny width: the pruning schedules' shape."""
    return write_tiny_llava(tiny_root / "llava-v1.6-vicuna-tiny-32", tiny_clip, next=True, num_layers=32, seed=4)


@pytest.fixture(scope="session")
def loaded_next32(tiny_next_32):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_next_32), device="cpu", pruning=None)
