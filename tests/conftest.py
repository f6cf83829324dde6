import pytest
import torch

from toydiff import datasets


@pytest.fixture(scope="session")
def three():
    return datasets.three_gaussians()


@pytest.fixture(scope="session")
def tree_mix():
    return datasets.tree()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
