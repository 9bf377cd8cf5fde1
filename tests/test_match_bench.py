"""The match benchmark runs end to end at a tiny size and reports sane figures."""

from __future__ import annotations

from streamnorm.match_bench import bench_match


def test_bench_match_reports_throughput_and_child_memory(tmp_path):
    report = bench_match(200, 3000, 16, 5, 0, max_results=500, workdir=tmp_path)
    for key in ("streamnorm_pairs_per_s", "faiss_pairs_per_s", "ratio"):
        assert report[key] > 0, key
    assert report["ratio"] == report["faiss_seconds"] / report["streamnorm_seconds"]
    # A Python process with numpy and faiss loaded takes tens of MB; a few KB would mean
    # the units were wrong.
    assert 20 < report["streamnorm_peak_rss_mb"] < 4000
    assert not list(tmp_path.iterdir())  # the temporary stores are gone
