"""toydiff.toy.geometry: the parallel share and size ratio of a guidance update."""
from __future__ import annotations

import pytest
import torch

from toydiff.toy.geometry import geometry_table, update_geometry


def test_parallel_orthogonal_and_scaled_updates():
    d1 = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    d0 = torch.tensor([[1.5, 2.0], [1.0, 2.0], [0.0, 0.0]])    # along D_1 (half of it), orthogonal, zero
    g = update_geometry(d1, d0, 3.0)
    assert torch.allclose(g["parallel_share"], torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
    # D_w = D_0 + 3 (D_1 - D_0): 2 D_1 for the first row, (-2, 2) for the second, 3 D_1 for the third
    assert torch.allclose(g["size_ratio"], torch.tensor([2.0, (8 ** 0.5) / 2, 3.0], dtype=torch.float64))


def test_random_directions_score_one_over_d_and_images_are_flattened():
    g = torch.Generator().manual_seed(0)
    d1, d0 = torch.randn(4000, 4, 5, 5, generator=g), torch.randn(4000, 4, 5, 5, generator=g)
    share = update_geometry(d1, d1 + d0, 2.0)["parallel_share"].mean()
    assert abs(float(share) - 1 / 100) < 0.002                 # E cos^2 = 1/d for a direction independent of D_1


def test_table_rows_and_bad_input():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    rows = geometry_table(lambda x, s: (x, 0.5 * x), x, [0.1, 1.0], 4.0)
    assert [r["sigma"] for r in rows] == [0.1, 1.0] and all(abs(r["parallel_share"] - 1) < 1e-12 for r in rows)
    assert all(abs(r["size_ratio"] - 2.5) < 1e-12 and r["random"] == 0.5 for r in rows)   # 0.5 x + 4 * 0.5 x
    with pytest.raises(ValueError, match="one shape"):
        update_geometry(x, x[:3], 2.0)
