"""`alignzeg bench` runs end to end at the tiny size and writes the figures it prints (CI checks that it
works; the README reports the figures of a full run and the machine they came from)."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("mmseg.models", reason="mmseg.models needs mmcv with ops")


def test_bench_tiny_writes_every_figure(tmp_path, capsys):
    from alignzeg.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "tiny", "--methods", "san-parent", "maskclip", "--repeats", "1", "--iters", "1",
                 "--batch-size", "2", "--metric-images", "4", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["size"] == "tiny" and data["image"] == 64 and data["machine"]["cpu_count"] >= 1
    assert set(data["methods"]) == {"san-parent", "maskclip"}
    for m, row in data["methods"].items():
        inf = row["inference"]
        assert inf["seconds_per_image"] > 0 and inf["clip_encoder_seconds"] > 0
        assert inf["ratio_to_clip"] == pytest.approx(inf["seconds_per_image"] / inf["clip_encoder_seconds"])
    assert "training" not in data["methods"]["maskclip"]  # training-free
    tr = data["methods"]["san-parent"]["training"]
    assert tr["batch_size"] == 2 and tr["seconds_per_iter"] > 0 and 0 <= tr["data_wait_share"] < 1
    ev, tx = data["evaluation"], data["text"]
    assert ev["throughput_ratio_to_bincount"] == pytest.approx(ev["bincount_seconds"] / ev["metric_seconds"])
    assert set(ev["peak_bytes"]) == {"4", "16"} and ev["peak_ratio_4n_to_n"] > 0
    assert tx["speedup"] == pytest.approx(tx["first_seconds"] / tx["cached_seconds"])
    printed = capsys.readouterr().out
    assert "x CLIP" in printed and "bare bincount" in printed and "faster than the first" in printed


def test_bench_names_an_unknown_method():
    from alignzeg.cli import main

    with pytest.raises(SystemExit, match=r"--methods: unknown \['segformer'\]"):
        main(["bench", "--methods", "segformer"])
