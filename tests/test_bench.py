"""The performance benchmark in its smoke mode: every row and column present, numbers sane."""

import json

import pytest

from llava import bench


def test_smoke_run_has_every_row_and_sane_numbers(tmp_path):
    results = bench.main(["--smoke", "--out", str(tmp_path), "--workdir", str(tmp_path / "ckpt")])
    table = results["tables"]["sdpa"]
    assert [r["method"] for r in table] == [name for name, _ in bench.methods()] + ["transformers"]
    by_name = {r["method"]: r for r in table}
    reference = by_name["transformers"]  # transformers' own generate on the llava-hf copy, unpruned
    assert reference["flops_ratio"] == 1 and reference["prefill_ms"] > 0 and reference["decode_ms_per_token"] > 0
    assert reference["decode_ms_per_token_compiled"] is None and "kept_agreement" not in results
    assert by_name["none"]["equal_tokens"] == 576 and by_name["none"]["flops_ratio"] == 1
    assert by_name["sparsevlm-1_0-192"]["visual_tokens"] == [576, 309, 204, 113]
    assert by_name["sparsevlm-2_0-64"]["visual_tokens"] == [576, 66, 34, 20]
    assert by_name["fastv-128"]["visual_tokens"] == [576, 128]
    assert by_name["fastv-128"]["equal_tokens"] == (2 * 576 + 30 * 128) / 32  # layers 0-1 see all 576
    assert by_name["fastervlm-64"]["visual_tokens"] == [576, 64] and by_name["random-192"]["equal_tokens"] == 192
    for r in table:
        assert 0 < r["flops_ratio"] <= 1 and r["latency_ratio"] > 0 and r["ttft_ms"] > 0
        assert r["decode_ms_per_token"] > 0 and r["answers_per_s_b1"] > 0 and r["answers_per_s_b8"] > 0
        assert r["kv_cache_mb"] <= by_name["none"]["kv_cache_mb"]
    saved = json.loads((tmp_path / "tiny-float32.json").read_text())
    assert saved["tables"]["sdpa"][0]["method"] == "none"
    assert (tmp_path / "tiny-float32.md").read_text().count("\n| ") == len(table) + 1
    assert (tmp_path / "tiny-float32.png").stat().st_size > 0


def test_next_smoke_prunes_the_anyres_block(tmp_path):
    """The NeXT path at toy size: a LLaVA-NeXT checkpoint, a 672x672 image, budgets as totals of 2,880."""
    argv = ["--shape", "cpu-next", "--smoke", "--batches", "1", "--out", str(tmp_path), "--workdir", str(tmp_path)]
    results = bench.main(argv)
    assert results["shape"] == "tiny-next" and results["next"] and results["image_size"] == [672, 672]
    table = results["tables"]["sdpa"]
    assert [r["method"] for r in table] == [name for name, _ in bench.methods(bench.NEXT_BUDGETS)] + ["transformers"]
    by_name = {r["method"]: r for r in table}
    assert by_name["transformers"]["equal_tokens"] == 2928 and by_name["transformers"]["ttft_ms"] > 0
    # anyres: 672x672 picks the 2x2 grid of 336 crops; base view 24x24, grid 48x48 (a square: nothing unpadded)
    # with one newline token per row
    side = 336 // 14
    rows = cols = 2 * side
    unpruned = side * side + rows * (cols + 1)
    assert unpruned == 2928
    none = by_name["none"]
    assert none["visual_tokens"] == [unpruned] and none["equal_tokens"] == unpruned and none["flops_ratio"] == 1
    for budget in bench.NEXT_BUDGETS:
        # FasterVLM's reference mode: budget / 5 per view, 'spatial' merge (5 x 576 patches, no newline tokens)
        assert by_name[f"fastervlm-{budget}"]["visual_tokens"] == [5 * side * side, budget]
        # random keeps the same share of each view in the checkpoint's merge, newline tokens kept
        assert by_name[f"random-{budget}"]["visual_tokens"] == [unpruned, budget + rows]
        # FastV: layers 0-1 see every token, then budget + newlines
        fastv = by_name[f"fastv-{budget}"]
        assert fastv["visual_tokens"] == [unpruned, budget + rows]
        assert fastv["equal_tokens"] == (2 * unpruned + 30 * (budget + rows)) / 32
        for version in ("1_0", "2_0"):  # equal tokens: the budget (scaled from a 576-token schedule) + newlines
            sparse = by_name[f"sparsevlm-{version}-{budget}"]
            assert sparse["visual_tokens"][0] == unpruned and len(sparse["visual_tokens"]) == 4
            assert abs(sparse["equal_tokens"] - rows - budget) <= 0.02 * budget
    for r in table[1:-1]:
        assert 0 < r["flops_ratio"] < 1 and r["tflops"] < none["tflops"]
        assert r["kv_cache_mb"] < none["kv_cache_mb"] and r["latency_ratio"] > 0 and r["answers_per_s_b1"] > 0
        assert "answers_per_s_b8" not in r
    assert (tmp_path / "tiny-next-float32.md").read_text().count("\n| ") == len(table) + 1
    assert (tmp_path / "tiny-next-float32.png").stat().st_size > 0


def test_qwen_smoke_prunes_the_merged_grid(tmp_path):
    """The Qwen2.5-VL path at toy size: a Hub-format Qwen checkpoint, a 1008x1008 image (36x36 merged tokens),
    budgets of 1,296; [CLS]-attention methods have no row, transformers' own generate has one."""
    argv = ["--shape", "cpu-qwen", "--smoke", "--batches", "1", "--out", str(tmp_path), "--workdir", str(tmp_path)]
    results = bench.main(argv)
    assert results["shape"] == "tiny-qwen" and results["qwen"] and results["image_size"] == [1008, 1008]
    unpruned = (1008 // 28) ** 2  # 14-pixel patches merged 2x2
    assert unpruned == 1296
    table = results["tables"]["sdpa"]
    names = [r["method"] for r in table]
    assert names == [name for name, _ in bench.methods(bench.QWEN_BUDGETS) if "fastervlm" not in name] + [
        "transformers"
    ]
    by_name = {r["method"]: r for r in table}
    assert by_name["none"]["visual_tokens"] == [unpruned] and by_name["none"]["flops_ratio"] == 1
    assert by_name["transformers"]["equal_tokens"] == unpruned and by_name["transformers"]["prefill_ms"] > 0
    layers = results["dims"][1]
    for budget in bench.QWEN_BUDGETS:
        assert by_name[f"random-{budget}"]["visual_tokens"] == [unpruned, budget]
        fastv = by_name[f"fastv-{budget}"]
        assert fastv["visual_tokens"] == [unpruned, budget]
        assert fastv["equal_tokens"] == pytest.approx((2 * unpruned + (layers - 2) * budget) / layers, abs=0.005)
        for version in ("1_0", "2_0"):
            sparse = by_name[f"sparsevlm-{version}-{budget}"]
            assert sparse["visual_tokens"][0] == unpruned and len(sparse["visual_tokens"]) == 4
            assert abs(sparse["equal_tokens"] - budget) <= 0.02 * budget
    for r in table[1:-1]:
        assert 0 < r["flops_ratio"] < 1 and r["kv_cache_mb"] < by_name["none"]["kv_cache_mb"]
    assert (tmp_path / "tiny-qwen-float32.md").read_text().count("\n| ") == len(table) + 1


def test_video_smoke_prunes_the_clip(tmp_path):
    """The Video-LLaVA path at toy size: an original-format Video-LLaVA checkpoint (LanguageBind towers, temporal
    attention), one 8-frame clip of 224-px crops (8 x 257 tokens), budgets as totals of the clip, SparseVLM's video
    branch, and transformers' own generate on the -hf conversion."""
    argv = ["--shape", "cpu-video", "--smoke", "--batches", "1", "--out", str(tmp_path), "--workdir", str(tmp_path)]
    results = bench.main(argv)
    assert results["shape"] == "tiny-video" and results["video"] and results["frames"] == 8
    table = results["tables"]["sdpa"]
    names = [name for name, _ in bench.methods(bench.VIDEO_BUDGETS)] + ["sparsevlm-video"]
    assert [r["method"] for r in table] == names + ["transformers"]
    by_name = {r["method"]: r for r in table}
    patches = (224 // 14) ** 2
    unpruned = 8 * (1 + patches)  # each frame's [CLS] and patches
    assert unpruned == 2056
    none = by_name["none"]
    assert none["visual_tokens"] == [unpruned] and none["equal_tokens"] == unpruned and none["flops_ratio"] == 1
    reference = by_name["transformers"]  # unpruned on the -hf port: the same decoder work
    assert reference["equal_tokens"] == unpruned and reference["prefill_ms"] > 0 and reference["ttft_ms"] > 0
    layers = results["dims"][1]
    for budget in bench.VIDEO_BUDGETS:
        per_frame = round(budget / unpruned * patches)  # the budget shared equally, [CLS] dropped
        assert by_name[f"fastervlm-{budget}"]["visual_tokens"] == [unpruned, 8 * per_frame]
        assert by_name[f"random-{budget}"]["visual_tokens"] == [unpruned, 8 * per_frame]
        fastv = by_name[f"fastv-{budget}"]
        assert fastv["visual_tokens"] == [unpruned, budget]
        assert fastv["equal_tokens"] == pytest.approx((2 * unpruned + (layers - 2) * budget) / layers, abs=0.005)
        for version in ("1_0", "2_0"):
            sparse = by_name[f"sparsevlm-{version}-{budget}"]
            assert sparse["visual_tokens"][0] == unpruned and len(sparse["visual_tokens"]) == 4
            assert abs(sparse["equal_tokens"] - budget) <= 0.04 * budget
    video = by_name["sparsevlm-video"]["visual_tokens"]  # one pruning step to rank(P): fewer tokens than a frame has
    assert len(video) == 2 and video[0] == unpruned and 0 < video[1] < patches
    for r in table[1:-1]:
        assert 0 < r["flops_ratio"] < 1 and r["kv_cache_mb"] < none["kv_cache_mb"] and r["answers_per_s_b1"] > 0
    markdown = (tmp_path / "tiny-video-float32.md").read_text()
    assert markdown.count("\n| ") == len(table) + 1 and "8 x 257 = 2,056 visual tokens" in markdown
    assert "no temporal attention" in markdown


def _filtered(tmp_path, *flags):
    argv = ["--smoke", "--attn", "sdpa", "eager", "--methods", "fastv-64", "--no-transformers", "--batches", "1"]
    return bench.main([*argv, *flags, "--out", str(tmp_path), "--workdir", str(tmp_path / "ckpt")])


def test_methods_filter_and_kept_agreement(tmp_path):
    """`--methods` picks rows; two --attn compare each method's kept tokens on the same inputs (eager and sdpa
    score the same rows here)."""
    results = _filtered(tmp_path)
    sdpa, eager = results["tables"]["sdpa"], results["tables"]["eager"]
    assert [r["method"] for r in sdpa] == [r["method"] for r in eager] == ["none", "fastv-64"]
    assert results["kept_agreement"] == {"fastv-64": 1.0}
    assert "eager" in (tmp_path / "tiny-float32.md").read_text()


@pytest.mark.slow  # compiles 32 layers for two kept-token schedules on CPU (minutes); correctness: test_decode_cache
def test_compiled_decode_column_for_the_first_attn(tmp_path):
    results = _filtered(tmp_path, "--compile")
    assert all(r["decode_ms_per_token_compiled"] > 0 for r in results["tables"]["sdpa"])
    assert all(r["decode_ms_per_token_compiled"] is None for r in results["tables"]["eager"])
    assert "compiled decode ms/token" in (tmp_path / "tiny-float32.md").read_text()
