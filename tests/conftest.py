"""Shared fixtures: tiny models, execution modes, the data directory."""
import os

import numpy as np
import pytest

os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")
import mindspore as ms  # noqa: E402

import ddpm_ms  # noqa: E402

TINY = dict(dim=8, dim_mults=(1, 2), channels=1)


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    """Run a test under GRAPH_MODE and under PYNATIVE_MODE (mindcv style)."""
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture
def tiny_model():
    ms.set_seed(0)
    return ddpm_ms.Unet(**TINY)


@pytest.fixture
def tiny_sched():
    return ddpm_ms.NoiseSchedule.from_name("linear", 10)


@pytest.fixture
def data_dir():
    path = os.environ.get("DDPM_MS_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("DDPM_MS_DATA_DIR does not point at the Fashion-MNIST IDX files")
    return path


def batch(shape, seed=0):
    """A fixed float32 Tensor batch in [-1, 1]."""
    return ms.Tensor(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))
