import numpy as np
import pytest

from streamnorm.config import NormalizationParams
from streamnorm.statistics import background

TOP = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.5, 0.5, 0.4, 0.1, -0.2]])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (NormalizationParams(statistic="nth", n=3), [0.7, 0.4]),
        (NormalizationParams(statistic="top1"), [0.9, 0.5]),
        (
            NormalizationParams(statistic="mean", n=4),
            [(0.9 + 0.8 + 0.7 + 0.6) / 4, (0.5 + 0.5 + 0.4 + 0.1) / 4],
        ),
        (
            NormalizationParams(statistic="slice", slice_start=1, slice_stop=3),
            [0.7, (0.5 + 0.4 + 0.1) / 3],
        ),
    ],
)
def test_statistics_on_hand_cases(params, expected):
    np.testing.assert_allclose(background(TOP, params), expected, rtol=1e-15)


def test_depth_needed_by_each_statistic():
    assert NormalizationParams(statistic="nth", n=10).depth == 10
    assert NormalizationParams(statistic="top1").depth == 1
    assert NormalizationParams(statistic="slice", slice_start=0, slice_stop=2).depth == 3
