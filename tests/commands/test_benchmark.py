"""`fastinst benchmark`: runs on the demo variant with a couple of iterations and writes valid JSON."""

from __future__ import annotations

import json

import pytest

from fastinst import build_model
from fastinst.cli import main
from fastinst.flops import count_flops


def test_benchmark_writes_json(tmp_path, capsys, monkeypatch):
    import fastinst.model.fuse as fuse

    fused: list[int] = []  # --fuse --channels-last on a CPU in fp32: the network as predict runs it, blocks fused
    fuse_blocks = fuse.fuse_blocks
    monkeypatch.setattr(fuse, "fuse_blocks", lambda model: fused.append(fuse_blocks(model)) or fused[-1])
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "benchmark",
                "--model",
                "fastinst-demo",
                "--size",
                "64",
                "96",
                "--iters",
                "2",
                "--warmup",
                "1",
                "--threads",
                "2",
                "--fuse",
                "--channels-last",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["model"] == "fastinst-demo" and result["size"] == [64, 96] and result["fused"]
    assert fused and fused[0] > 0
    for key in ("network", "pipeline"):
        stats = result[key]
        assert 0 < stats["median_ms"] <= stats["p90_ms"] and stats["fps"] > 0
        assert stats["floor_ms"] > 0 and 0 < stats["fraction_of_peak"]
    assert result["matmul"]["gflops_per_s"] > 0 and result["params"] > 1e6
    # GFLOPs are those of the unfused model at the benchmarked size (the counting rules are tested in test_flops.py)
    flops = count_flops(build_model("fastinst-demo"), 64, 96)
    assert result["gflops"] == {k: round(v / 1e9, 3) for k, v in flops.items()}
    # the network is timed without the post-processing, the pipeline with it: the rates use the matching counts
    network = flops["backbone"] + flops["pixel_decoder"] + flops["decoder"]
    peak = result["matmul"]["gflops_per_s"]
    for key, macs in (("network", network), ("pipeline", flops["total"])):
        stats = result[key]
        assert stats["achieved_gflops_per_s"] == pytest.approx(2 * macs / stats["median_ms"] / 1e6, rel=1e-9)
        assert stats["floor_ms"] == pytest.approx(2 * macs / peak / 1e6, rel=1e-9)
    assert "pipeline" in capsys.readouterr().out


def test_benchmark_rejects_bad_options(capsys):
    assert main(["benchmark", "--model", "fastinst-demo", "--size", "60", "96"]) == 2
    with pytest.raises(SystemExit) as refused:  # a count out of range is refused while parsing
        main(["benchmark", "--model", "fastinst-demo", "--iters", "0"])
    assert refused.value.code == 2
    assert (
        main(
            [
                "benchmark",
                "--model",
                "fastinst-demo",
                "--backend",
                "onnxruntime",
                "--dtype",
                "bf16",
                "--size",
                "64",
                "96",
                "--iters",
                "1",
            ]
        )
        == 2
    )
    assert "onnxruntime" in capsys.readouterr().err
