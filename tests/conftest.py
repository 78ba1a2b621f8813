import os

import pytest
import torch

from escn_plugin.common.default_dtype import float64_default as _float64_default

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def float64_default():
    """float64 as torch's default dtype for one test: the reference eSCN makes its zeros,
    and fairchem's graph code some tensors, in the default dtype."""
    with _float64_default():
        yield
