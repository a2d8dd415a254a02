"""Kept-token pictures (`llava.analysis.kept_map`, `llava.analysis.compare_kept`, `run_llava --save-kept-map`):
the engine's per-stage provenance, the cells the picture marks against indices mapped to the grid here, merged
clusters drawn on exactly the patches they absorbed, and every command end to end on tiny checkpoints."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from llava.analysis import compare_kept
from llava.analysis.kept_map import DIM, TINT, cluster_color, kept_map, save_kept_map, stage_cells
from llava.eval import run_llava
from llava.model.anyres import MERGED
from llava.sparse.engine import PrefillPlan, PruningMethod
from llava.sparse.fastv import FastV
from llava.sparse.pre_llm import RandomPruning
from llava.synthetic.scenes import draw, evidence_patches, make_scene

from .helpers import pixels, prompt_ids

SIDE = 24  # LLaVA-1.5's 24 x 24 patch grid (the tiny checkpoints keep CLIP-L/336's geometry)
QUESTION = "What color is the circle?"


@pytest.fixture(scope="module")
def scene():
    for seed in range(50):  # a scene with a circle, so that the question has evidence patches
        made = make_scene(random.Random(seed))
        if any(s.shape == "circle" for s in made.shapes):
            return made
    raise AssertionError("no scene with a circle")


def _generate(loaded, method, image, question=QUESTION):
    tokenizer, model, processor, _ = loaded
    model.set_pruning(method)
    try:
        ids = prompt_ids(tokenizer, question)[None]
        model.generate(ids, images=pixels(processor, model, image), max_new_tokens=2, eos_token_id=-1)
        return model.last_accounts[0]
    finally:
        model.set_pruning(None)


def _cell_means(picture: Image.Image, origin, cell: int, r: int, c: int) -> np.ndarray:
    """Mean colour of a cell's interior (the 1-px outline left out)."""
    x, y = origin[0] + c * cell, origin[1] + r * cell
    return np.asarray(picture.crop((x + 2, y + 2, x + cell - 2, y + cell - 2)), dtype=np.float64).reshape(-1, 3)


def _assert_marks(picture, geometry, stage: int, source: Image.Image, kept: set):
    """Kept cells show `source`, every other cell shows it dimmed."""
    origin, cell = geometry.origins[(stage, 0)], geometry.cell[0]
    src = source.convert("RGB").resize((SIDE * cell, SIDE * cell), Image.Resampling.BICUBIC)
    dimmed = Image.eval(src, lambda v: int(v * DIM))
    for r in range(SIDE):
        for c in range(SIDE):
            got = _cell_means(picture, origin, cell, r, c)
            want = _cell_means(src if (r, c) in kept else dimmed, (0, 0), cell, r, c)
            assert np.abs(got - want).max() <= 1, ((r, c), (r, c) in kept)


def test_fastv_map_marks_exactly_the_engine_kept_patches(loaded, scene):
    image = draw(scene)
    account = _generate(loaded, FastV(k=2, retained_tokens=64), image)
    assert [s.layer for s in account.stages] == ["input", 1]
    assert torch.equal(account.stages[1].tokens.patch, account.kept[1])  # one view, no newline: index = patch
    kept = {(int(i) // SIDE, int(i) % SIDE) for i in account.kept[1]}  # the raster, mapped here
    assert len(kept) == 64
    out = {}
    picture = kept_map(image, account.stages, answer="x", geometry=out)
    geometry = out["geometry"]
    assert geometry.cells[0].kept[0] == {(r, c) for r in range(SIDE) for c in range(SIDE)}
    assert geometry.cells[1].kept[0] == kept
    _assert_marks(picture, geometry, 0, image, geometry.cells[0].kept[0])
    _assert_marks(picture, geometry, 1, image, kept)
    evidence = evidence_patches(scene, QUESTION)[0]
    assert evidence  # the circle's patches: marked exactly when the engine kept them
    marked = {p for p in evidence if (p // SIDE, p % SIDE) in geometry.cells[1].kept[0]}
    assert marked == set(evidence) & set(account.kept[1].tolist())


def test_pre_llm_choice_is_the_input_stage(loaded, scene):
    image = draw(scene)
    account = _generate(loaded, RandomPruning(48, seed=3), image)
    assert len(account.stages) == 1 and account.stages[0].layer == "input"
    patches = account.stages[0].tokens.patch
    out = {}
    picture = kept_map(image, account.stages, geometry=out)
    kept = {(int(p) // SIDE, int(p) % SIDE) for p in patches}
    assert len(kept) == 48 and out["geometry"].cells[0].kept[0] == kept
    _assert_marks(picture, out["geometry"], 0, image, kept)


class _ToyMerge(PruningMethod):
    """After layer 0: keep visual tokens 0..99, merge 100..109 -> merged A, 110..119 -> merged B. After layer 1:
    keep 0..49 and merged A (index 100), merge 50..59 with merged B (index 101) -> merged C."""

    name = "toy-merge"

    def plan(self, layouts, model, inputs):
        return _ToyPlan(layouts, model.config.text_config.num_hidden_layers, model.config.text_config, model.dtype)


class _ToyPlan(PrefillPlan):
    def prune(self, layer_idx, state, request):
        if layer_idx not in (0, 1):
            return state
        hidden, padded = state.hidden_states, state.hidden_states.shape[1]
        keep, merged, positions, members = [], [], [], []
        for b, layout in enumerate(self.layouts):
            start = layout.visual_start(padded)
            if layer_idx == 0:
                kept, groups = torch.arange(100), [torch.arange(100, 110), torch.arange(110, 120)]
            else:
                kept, groups = (
                    torch.cat([torch.arange(50), torch.tensor([100])]),
                    [torch.cat([torch.arange(50, 60), torch.tensor([101])])],
                )
            keep.append(kept)
            merged.append(torch.stack([hidden[b, start + g].mean(0) for g in groups]))
            positions.append(torch.stack([state.position_ids[b, start + g[0]] for g in groups]))
            members.append(groups)
        return self.rebuild(state, keep, merged, merged_positions=positions, merged_members=members)


def test_merged_clusters_cover_exactly_the_patches_they_absorbed(loaded, scene):
    image = draw(scene)
    account = _generate(loaded, _ToyMerge(), image)
    assert [s.layer for s in account.stages] == ["input", 0, 1]
    first, second = account.stages[1], account.stages[2]
    assert int((first.tokens.view == MERGED).sum()) == 2 and int((second.tokens.view == MERGED).sum()) == 2
    assert [a.patch.tolist() for a in first.absorbed] == [list(range(100, 110)), list(range(110, 120))]
    # the kept merged token A carries its patches on; C absorbed 50..59 and, through B, 110..119
    assert [sorted(a.patch.tolist()) for a in second.absorbed] == [
        list(range(100, 110)),
        list(range(50, 60)) + list(range(110, 120)),
    ]
    out = {}
    picture = kept_map(image, account.stages, geometry=out)
    geometry = out["geometry"]
    cells = lambda patches: {(p // SIDE, p % SIDE) for p in patches}  # noqa: E731
    assert [m[0] for m in geometry.cells[1].merged] == [cells(range(100, 110)), cells(range(110, 120))]
    assert [m[0] for m in geometry.cells[2].merged] == [
        cells(range(100, 110)),
        cells([*range(50, 60), *range(110, 120)]),
    ]
    assert geometry.cells[2].kept[0] == cells(range(50))
    cell = geometry.cell[0]
    src = image.convert("RGB").resize((SIDE * cell, SIDE * cell), Image.Resampling.BICUBIC)
    for stage in (1, 2):
        origin = geometry.origins[(stage, 0)]
        for k, merged in enumerate(geometry.cells[stage].merged):
            tint = Image.blend(src, Image.new("RGB", src.size, cluster_color(k)), TINT)
            for r, c in merged[0]:
                got, want = _cell_means(picture, origin, cell, r, c), _cell_means(tint, (0, 0), cell, r, c)
                assert np.abs(got - want).max() <= 1
        # no other cell is tinted: every cell is the image, dimmed or a cluster's tint
        tinted = set().union(*(m[0] for m in geometry.cells[stage].merged))
        for r, c in {(r, c) for r in range(SIDE) for c in range(SIDE)} - tinted - geometry.cells[stage].kept[0]:
            got = _cell_means(picture, origin, cell, r, c)
            want = _cell_means(Image.eval(src, lambda v: int(v * DIM)), (0, 0), cell, r, c)
            assert np.abs(got - want).max() <= 1


def test_stage_cells_skip_newline_and_cls_tokens():
    from llava.model.anyres import frames_layout, merge_layout

    unpad = merge_layout(5, 4, "spatial_unpad", grid=(2, 2), image_size=(100, 50))
    panels, (cells,) = stage_cells([("input", unpad)])
    assert [p.key for p in panels] == ["base", "crops"] and (panels[1].rows, panels[1].cols) == (8, 8)
    assert cells.num_newlines == unpad.num_newlines and len(cells.kept[0]) == 16
    assert len(cells.kept[1]) == int((unpad.view >= 1).sum())  # every crop patch, no newline cell
    video = frames_layout(3, 4, cls=True)
    panels, (cells,) = stage_cells([("input", video)])
    assert len(panels) == 3 and all(len(k) == 16 for k in cells.kept)


def _check_png(path, min_size=(200, 200)):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.width >= min_size[0] and picture.height >= min_size[1]
        pixels_ = np.asarray(picture.convert("RGB"))
    assert pixels_.std() > 20 and len(np.unique(pixels_.reshape(-1, 3), axis=0)) > 50  # not blank


def test_run_llava_save_kept_map(tiny_llava, scene, tmp_path, capsys):
    image = tmp_path / "scene.png"
    draw(scene).save(image)
    out = tmp_path / "maps" / "fastv.png"
    args = ["--model-path", str(tiny_llava), "--image-file", str(image), "--query", QUESTION, "--temperature", "0",
            "--max_new_tokens", "3", "--device", "cpu", "--method", "fastv", "--retained-tokens", "64",
            "--save-kept-map", str(out)]  # fmt: skip
    run_llava.main(args)
    assert capsys.readouterr().out.strip()
    _check_png(out, (300, 600))  # two stages of a 336-px panel
    assert not [p for p in out.parent.iterdir() if p.name != "fastv.png"]  # written atomically, nothing left


def test_compare_kept_cli_with_sparsevlm_raters(tiny_llava_32, scene, tmp_path, capsys, monkeypatch):
    image = tmp_path / "scene.png"
    draw(scene).save(image)
    out = tmp_path / "fig.png"
    compare_kept.main(["--model-path", str(tiny_llava_32), "--image", str(image), "--query", QUESTION,
                       "--methods", "fastv-64", "sparsevlm-1_0-64", "random-64", "--temperature", "0",
                       "--max_new_tokens", "2", "--device", "cpu", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert all(f"{spec}: " in printed for spec in ("fastv-64", "sparsevlm-1_0-64", "random-64"))
    _check_png(out, (3 * 340, 4 * 336))  # three maps side by side; SparseVLM's has four stages


def test_method_specs():
    assert compare_kept.parse_spec("fastv-64") == {"method": "fastv", "retained_tokens": 64, "sparse_version": None}
    assert compare_kept.parse_spec("sparsevlm-2_0-64")["sparse_version"] == "2_0"
    assert compare_kept.parse_spec("prumerge+") == {"method": "prumerge+", "retained_tokens": None,
                                                    "sparse_version": None}  # fmt: skip
    with pytest.raises(ValueError, match="Unknown method spec"):
        compare_kept.parse_spec("nosuch-64")


def test_raters_are_listed(loaded32, scene, tmp_path):
    from llava.analysis.kept_map import capture_plans, map_of_generation
    from llava.sparse.sparsevlm import SparseVLM

    tokenizer, model, processor, _ = loaded32
    model.set_pruning(SparseVLM("1_0", 64, seed=0))
    try:
        ids = prompt_ids(tokenizer, QUESTION)[None]
        with capture_plans(model) as plans:
            model.generate(ids, images=pixels(processor, model, draw(scene)), max_new_tokens=1, eos_token_id=-1)
        assert "plan" not in vars(model.pruning)  # the method is left as it was
        from llava.analysis.kept_map import rater_words

        words = rater_words(plans[-1], ids, tokenizer)
        assert words and len(words) == len(plans[-1].raters[0])
        stages = model.last_accounts[0].stages
        assert [s.layer for s in stages] == ["input", 2, 6, 15]
        for before, stage in zip(
            stages, stages[1:], strict=False
        ):  # what survives: the kept tokens, then the new merged ones
            kept = model.last_accounts[0].kept[stage.layer]
            assert torch.equal(stage.tokens.patch[: len(kept)], before.tokens.patch[kept])
            assert bool((stage.tokens.view[len(kept) :] == MERGED).all()) and len(stage.tokens) > len(kept)
        for stage in stages[1:]:  # merged tokens: drawn on what they absorbed where SparseVLM says, else counted
            if stage.absorbed is None:
                continue
            assert len(stage.absorbed) == stage.tokens.num_merged
            seen = set()
            for members in stage.absorbed:  # clusters are disjoint and hold no patch the stage still keeps
                cells = set(members.patch.tolist())
                assert not cells & seen and not cells & set(stage.tokens.patch.tolist())
                seen |= cells
        save_kept_map(tmp_path / "s.png", map_of_generation(model, tokenizer, plans, ids, draw(scene)))
        _check_png(tmp_path / "s.png")
    finally:
        model.set_pruning(None)


@pytest.fixture(scope="module")
def family_checkpoints(tmp_path_factory, tiny_next):
    """Tiny Qwen2.5-VL and Video-LLaVA checkpoints, a short clip, a wide image (NeXT picks a 2-crop grid)."""
    from llava.testing.qwen_checkpoints import write_tiny_qwen_vl
    from llava.testing.video_llava import write_tiny_video_llava
    from llava.testing.videos import synthetic_frames, write_video

    root = tmp_path_factory.mktemp("kept_families")
    wide = root / "wide.png"
    draw(make_scene(random.Random(1))).resize((500, 300)).save(wide)
    return {
        "next": tiny_next,
        "qwen": write_tiny_qwen_vl(root / "qwen2_5_vl", num_layers=4, seed=3),
        "video": write_tiny_video_llava(root / "video", seed=1),
        "clip": write_video(root / "a.mp4", synthetic_frames(16, 96, 64)),
        "image": wide,
    }


FAMILIES = [  # checkpoint, visual flag, method, panels per stage, stages
    ("next", "image", ["--method", "fastv", "--retained-tokens", "64"], ["base", "crops"], 2),
    ("next", "image", ["--method", "random", "--retained-tokens", "64"], ["base", "crops"], 1),
    ("qwen", "image", ["--method", "fastv", "--retained-tokens", "32"], ["grid"], 2),
    ("video", "clip", ["--method", "fastv", "--retained-tokens", "64"], [f"frame {i}" for i in range(8)], 2),
    ("qwen", "clip", ["--method", "fastv", "--retained-tokens", "32"], ["frames 0-1", "frames 2-3"], 2),
]


@pytest.mark.parametrize(("family", "visual", "method", "panels", "stages"), FAMILIES)
def test_run_llava_kept_map_on_every_family(family_checkpoints, tmp_path, family, visual, method, panels, stages):
    from llava.analysis.kept_map import panels_of
    from llava.model_args import load_from_args

    flag = "--image-file" if visual == "image" else "--video-file"
    out = tmp_path / "map.png"
    argv = ["--model-path", str(family_checkpoints[family]), flag, str(family_checkpoints[visual]), "--query",
            "What is shown?", "--temperature", "0", "--max_new_tokens", "2", "--device", "cpu", *method,
            "--save-kept-map", str(out)]  # fmt: skip
    if family == "qwen":
        argv += ["--min-pixels", str(28 * 28 * 4), "--max-pixels", str(28 * 28 * 64)]
    args = run_llava.build_parser().parse_args(argv)
    loaded = load_from_args(args)
    assert run_llava.eval_model(args, loaded) is not None
    account = loaded[1].last_accounts[0]
    assert len(account.stages) == stages
    assert [p.key for p in panels_of(account.stages[0].tokens)] == panels
    _check_png(out, (300, 300))


def _input_clusters(account) -> list[set[tuple[int, int]]]:
    """The cells each merged token of the LLM's input stage is drawn on (the picture's own cell sets)."""
    _, cells = stage_cells(account.stages)
    assert all(m is not None for m in cells[0].merged)
    return [m[0] for m in cells[0].merged]


def test_pooling_clusters_are_the_pooled_windows(loaded, scene):
    from llava.sparse.pooling import GridPooling

    account = _generate(loaded, GridPooling(stride=2), draw(scene))
    clusters = _input_clusters(account)
    # stride 2 on 24 x 24: pooled token (i, j) averages the 2 x 2 window at rows 2i..2i+1, columns 2j..2j+1
    expected = [{(2 * i + dr, 2 * j + dc) for dr in (0, 1) for dc in (0, 1)} for i in range(12) for j in range(12)]
    assert clusters == expected
    picture = kept_map(draw(scene), account.stages)
    assert picture.width >= 336


def test_visionzip_clusters_follow_the_spec_assignment(loaded, scene):
    from llava.sparse.visionzip import VisionZip, selected_layer_signals

    _, model, processor, _ = loaded
    image = draw(scene)
    dominant, contextual = 20, 4
    account = _generate(loaded, VisionZip(dominant=dominant, contextual=contextual), image)
    clusters = _input_clusters(account)
    # by hand, from the spec's rule on the same tower signals: dominant = [CLS] + top D-1 patches; the rest in raster
    # order, every (R // C)-th a target, every other one joins the target of highest key cosine
    tower = model.get_vision_tower()
    _, cls_row, keys = selected_layer_signals(tower, pixels(processor, model, image).to(tower.dtype))
    top = set((torch.topk(cls_row[0], dominant - 1).indices + 1).tolist())
    rest = [r for r in range(1, keys.shape[1]) if r not in top]
    step = len(rest) // contextual
    targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
    unit = keys[0] / keys[0].norm(dim=-1, keepdim=True)
    groups = {t: {t} for t in targets}
    for r in rest:
        if r not in groups:
            groups[max(targets, key=lambda t: (float(unit[r] @ unit[t]), -targets.index(t)))].add(r)
    expected = [{((r - 1) // SIDE, (r - 1) % SIDE) for r in groups[t]} for t in targets]
    assert clusters == expected
    assert sum(len(c) for c in clusters) == SIDE * SIDE - (dominant - 1)  # every non-dominant patch, once


def test_prumerge_extra_token_absorbs_the_pruned_patches(tiny_clip, tmp_path_factory, scene):
    from llava.model.builder import load_pretrained_model
    from llava.sparse.prumerge import PruMerge
    from llava.testing import write_tiny_llava

    folder = write_tiny_llava(tmp_path_factory.mktemp("pm") / "llava", tiny_clip)
    loaded_full = load_pretrained_model(str(folder), device="cpu", pruning=PruMerge())
    account = _generate(loaded_full, PruMerge(), draw(scene))
    (cluster,) = _input_clusters(account)
    tokens = account.stages[0].tokens
    kept = {(int(r), int(c)) for r, c in zip(tokens.row, tokens.col, strict=True) if r >= 0}
    assert cluster == {(r, c) for r in range(SIDE) for c in range(SIDE)} - kept
