"""Learned transforms inside the real pipeline: dimension budget, invariance, audit."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from streamnorm.config import build_params
from streamnorm.model import Normalizer, fit_model
from streamnorm.pipeline import normalize
from streamnorm.verify import verify

SETTINGS = [
    ["whiten=true", "max_dim=32"],
    ["nes=true", "nes_k=5", "beta=1.0", "side=both", "max_dim=20", "reduction=drop"],
    ["preset:nes"],
]


def params_for(overrides):
    if overrides and overrides[0].startswith("preset:"):
        return build_params(overrides[0].split(":")[1])
    return build_params("isc21", None, overrides)


@pytest.mark.parametrize("overrides", SETTINGS)
def test_transforms_keep_the_budget_and_the_bytes(small_data, tmp_path, overrides):
    params = params_for(overrides)
    model = fit_model(small_data.train_path, tmp_path / "m", params)
    budget = params.max_dim or (small_data.train.shape[1] + 2)
    assert model.output_dim <= budget
    if params.max_dim:
        assert model.output_dim == params.max_dim
    outputs = []
    for chunk_rows, workers in ((13, 2), (150, 1)):
        out = tmp_path / f"q{chunk_rows}.zarr"
        normalize(
            small_data.queries_path,
            tmp_path / "m",
            "query",
            out,
            chunk_rows=chunk_rows,
            workers=workers,
        )
        group = zarr.open_group(str(out), mode="r")
        assert group["vectors"].shape == (len(small_data.queries), model.output_dim)
        outputs.append(np.asarray(group["vectors"][:]).tobytes())
    assert outputs[0] == outputs[1]
    assert verify(tmp_path / "q13.zarr", small_data.queries_path, tmp_path / "m", sample=30).ok
    # The saved model reproduces the fitted one bit for bit.
    again = Normalizer.load(tmp_path / "m").transform(small_data.queries[:7])
    first = model.transform(small_data.queries[:7])
    assert again.base.tobytes() == first.base.tobytes()
    assert again.background.tobytes() == first.background.tobytes()
