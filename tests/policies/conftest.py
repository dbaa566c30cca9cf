"""Every test of the learning algorithms runs torch on one thread: their networks are tiny, and one thread is faster
than two fighting over a busy machine."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
