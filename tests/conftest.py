import os
import sys

import pytest
import torch

from escn_plugin.so3 import s2_grid

sys.path.insert(0, os.path.dirname(__file__))  # tests/structures.py helpers
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test: the reference eSCN makes its zeros,
    and fairchem's graph code some tensors, in the default dtype."""
    with s2_grid.float64_default():
        yield
