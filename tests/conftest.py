import os

import pytest
import torch

# Two cores, shared: keep every test single-threaded and deterministic.
torch.set_num_threads(1)
os.environ.setdefault('OMP_NUM_THREADS', '1')


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU; run them with `pytest -m cuda` (they skip elsewhere)')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
