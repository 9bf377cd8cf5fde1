"""Fitting with tasks on another scheduler gives the default fit's model, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamnorm import transforms
from streamnorm.config import build_params
from streamnorm.model import fit_model

# NES with augmented negatives, whitening before it and a dimension budget after it:
# every pass that searches the training set runs as tasks.
OVERRIDES = ["nes_alpha=3.0", "whiten=true", "max_dim=20"]
FILES = ("transforms.npz", "index.faiss")


def model_bytes(folder):
    info = json.loads((folder / "model.json").read_text())
    return {name: (folder / name).read_bytes() for name in FILES}, info


@pytest.fixture(scope="module")
def default_model(small_data, tmp_path_factory):
    """The model of the default path (threads: everything in this process)."""
    out = tmp_path_factory.mktemp("fit-default") / "model"
    fit_model(small_data.train_path, out, build_params("nes", overrides=OVERRIDES))
    return model_bytes(out)


def test_fit_on_processes_equals_the_default(small_data, tmp_path, monkeypatch):
    # Small blocks: several tasks per pass, in several waves. (Block sizes change the
    # float64 sums of the fitted moments, so the default runs with the same blocks.)
    monkeypatch.setattr(transforms, "BLOCK_ROWS", 256)
    params = build_params("nes", overrides=OVERRIDES)
    fit_model(small_data.train_path, tmp_path / "default", params)
    fit_model(small_data.train_path, tmp_path / "tasks", params, scheduler="processes")
    files, info = model_bytes(tmp_path / "tasks")
    expected_files, expected_info = model_bytes(tmp_path / "default")
    assert info["fingerprint"] == expected_info["fingerprint"]
    assert files == expected_files
    assert info == expected_info


def test_fit_config_file_sets_the_scheduler_but_not_the_model(small_data, default_model, tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text(
        'nes_alpha = 3.0\nwhiten = true\nmax_dim = 20\nscheduler = "processes"\nworkers = 2\n'
    )
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "streamnorm", "fit", str(small_data.train_path), "--out", str(out),
         "--preset", "nes", "--config", str(config), "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files, info = model_bytes(out)
    # The run settings are not parameters: same fingerprint, same model.json.
    assert files == default_model[0]
    assert info == default_model[1]
    assert "scheduler" not in info["params"] and "workers" not in info["params"]
