from rich.console import Console

from streamnorm.demo import run_demo
from streamnorm.synth import SynthSpec


def test_demo_shows_the_gain_of_normalization(tmp_path):
    spec = SynthSpec(n_queries=400, n_refs=3000, n_train=3000, dim=32)
    console = Console(record=True, width=120)
    results = run_demo(tmp_path / "demo", spec=spec, progress=False, console=console)
    assert results["normalized"].micro_ap > 1.3 * results["raw"].micro_ap
    assert (tmp_path / "demo" / "evaluation.png").stat().st_size > 10_000
    text = console.export_text()
    assert "muAP" in text and f"{results['normalized'].micro_ap:.4f}" in text
