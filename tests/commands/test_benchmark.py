"""`fastinst benchmark`: runs on the demo variant with a couple of iterations and writes valid JSON."""

from __future__ import annotations

import json

from fastinst.cli import main


def test_benchmark_writes_json(tmp_path, capsys):
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
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["model"] == "fastinst-demo" and result["size"] == [64, 96] and result["fused"]
    for key in ("network", "pipeline"):
        stats = result[key]
        assert 0 < stats["median_ms"] <= stats["p90_ms"] and stats["fps"] > 0
        assert stats["floor_ms"] > 0 and 0 < stats["fraction_of_peak"]
    assert result["matmul"]["gflops_per_s"] > 0 and result["params"] > 1e6 and result["gflops"]["total"] > 0
    assert "pipeline" in capsys.readouterr().out


def test_benchmark_rejects_bad_options(capsys):
    assert main(["benchmark", "--model", "fastinst-demo", "--size", "60", "96"]) == 2
    assert main(["benchmark", "--model", "fastinst-demo", "--iters", "0"]) == 2
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
