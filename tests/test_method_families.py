"""The registry's model families (what `--help`, the README's method table and every refusal's "Methods that apply"
list are made from) agree with what each method really does: `set_pruning` accepts a method on a tiny model of each
family it names and refuses it, naming the methods that do apply, on every other."""

from __future__ import annotations

import argparse

import pytest

from llava.model.builder import load_pretrained_model
from llava.sparse.engine import PruningMethod
from llava.sparse.methods import BUILTIN_METHODS, add_pruning_args, method_names, pruning_from_args
from llava.sparse.registry import (
    EVERY_FAMILY,
    LLAVA_15,
    LLAVA_NEXT,
    QWEN_VL,
    VIDEO_LLAVA,
    ZOO,
    family_of,
    methods_for,
    methods_that_apply,
)

# flags each method is built with here: a budget every tiny model can meet (or the method's own knob), and layers
# that 4-layer models have
FLAGS = {
    "downsample": [],
    "prumerge": [],
    "prumerge+": [],
    "hired": ["--hired-rate", "0.2"],
    "sparsevlm": ["--retained-ratio", "0.5", "--pruning-layers", "1", "2", "3"],
    "pdrop": ["--retained-ratio", "0.5", "--pdrop-layers", "1", "2", "3"],
    "holitom": ["--holitom-k", "2"],
}
DEFAULT_FLAGS = ["--retained-ratio", "0.5"]


class FullTower(PruningMethod):
    """No pruning, loaded as PruMerge's towers are: with the layer after the feature layer kept."""

    needs_full_tower = True


@pytest.fixture(scope="module")
def models(tiny_llava, tiny_next, tmp_path_factory) -> dict:
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl
    from llava.testing.video_llava import write_tiny_video_llava

    root = tmp_path_factory.mktemp("families")
    folders = {
        LLAVA_15: tiny_llava,
        LLAVA_NEXT: tiny_next,
        QWEN_VL: write_tiny_qwen_vl(root / "qwen2_5_vl", num_layers=4, seed=3),
        VIDEO_LLAVA: write_tiny_video_llava(root / "video", seed=1),
    }
    return {
        family: load_pretrained_model(str(folder), device="cpu", pruning=FullTower())[1]
        for family, folder in folders.items()
    }


def build(name: str):
    parser = argparse.ArgumentParser()
    add_pruning_args(parser)
    return pruning_from_args(parser.parse_args(["--method", name, *FLAGS.get(name, DEFAULT_FLAGS)]), {})


def test_each_model_is_of_its_family(models):
    assert {family: family_of(model) for family, model in models.items()} == {f: f for f in EVERY_FAMILY}


@pytest.mark.parametrize("name", [name for name in method_names() if name != "none"])
def test_a_method_applies_exactly_to_its_registered_families(models, name):
    for family, model in models.items():
        method = build(name)
        if name in methods_for(family):
            model.set_pruning(method)  # accepted
            model.set_pruning(None)
        else:
            with pytest.raises(ValueError) as refused:
                model.set_pruning(method)
            assert methods_that_apply(model) in str(refused.value), (family, str(refused.value))


def test_every_method_is_registered_for_some_family():
    assert set(method_names()) == {"none", *(name for family in EVERY_FAMILY for name in methods_for(family))}
    assert BUILTIN_METHODS[0] == "none" and set(BUILTIN_METHODS[1:]).isdisjoint(ZOO)


def test_video_only_methods_are_left_out_where_images_are_asked_about():
    with_videos = methods_that_apply(QWEN_VL)
    images_only = methods_that_apply(QWEN_VL, videos=False)
    assert "dycoke (video)" in with_videos and "holitom (video)" in with_videos
    assert "dycoke" not in images_only and "holitom" not in images_only and "downsample" in images_only
    assert "fastervlm" not in with_videos and "fastervlm" in methods_that_apply(VIDEO_LLAVA)
