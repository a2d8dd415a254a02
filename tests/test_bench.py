"""The performance benchmark in its smoke mode: every row and column present, numbers sane."""

import json

from llava import bench


def test_smoke_run_has_every_row_and_sane_numbers(tmp_path):
    results = bench.main(["--smoke", "--out", str(tmp_path), "--workdir", str(tmp_path / "ckpt")])
    table = results["tables"]["sdpa"]
    assert [r["method"] for r in table] == [name for name, _ in bench.methods()]
    by_name = {r["method"]: r for r in table}
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
