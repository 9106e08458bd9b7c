"""Shared fixtures: tiny models, execution modes, the data directory."""
import os

import numpy as np
import pytest

os.environ.setdefault("MS_DEV_HOST_BLOCKING_RUN", "1")
os.environ.setdefault("GLOG_v", "3")
import mindspore as ms  # noqa: E402

import ddpm_ms  # noqa: E402

TINY = dict(dim=8, dim_mults=(1, 2), channels=1)          # a tiny Unet's keyword arguments
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(ROOT, "configs", "tiny.yaml")   # the tiny config: seconds per epoch


# The longest files (minutes each on a slow 2-core machine) start first, so that `-n 2 --dist loadfile` does not
# end with one worker alone on one of them (`make test` passes --no-loadscope-reorder: xdist would otherwise
# start the files with the most tests first, and these have few).
LONGEST_FIRST = ("test_faults_phases.py", "test_distributed.py", "test_cli.py", "test_train_eval.py",
                 "test_metrics.py", "test_resume.py", "test_device.py", "test_train_step.py", "test_datasets.py")


def pytest_collection_modifyitems(items):
    """Collect the LONGEST_FIRST files first (in that order), the rest after them as they were."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


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


def data_dir_or_skip():
    """The Fashion-MNIST folder of DDPM_MS_DATA_DIR, or skip the test."""
    path = os.environ.get("DDPM_MS_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("DDPM_MS_DATA_DIR does not point at the Fashion-MNIST IDX files")
    return path


@pytest.fixture
def data_dir():
    return data_dir_or_skip()


@pytest.fixture
def root():
    """The repository's root folder."""
    return ROOT


@pytest.fixture
def tiny_config(tmp_path):
    """tiny_config(*overrides, out=None): tiny.yaml with train.out_dir in tmp_path (or ``out``) and the overrides."""
    from ddpm_ms.config import load_config  # pylint: disable=import-outside-toplevel

    def make(*overrides, out=None):
        return load_config(TINY_YAML, [f"train.out_dir={out or tmp_path}", *overrides])
    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny run trained once per session (6 steps, no EMA warm-up): {"folder", "checkpoint", "config"}."""
    data_dir_or_skip()
    from ddpm_ms.config import load_config  # pylint: disable=import-outside-toplevel
    from ddpm_ms.trainer import Trainer  # pylint: disable=import-outside-toplevel
    folder = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(TINY_YAML, [f"train.out_dir={folder}", "train.max_steps=6", "train.gif=false",
                                  "train.sample_num=4"])
    summary = Trainer.from_config(cfg).fit(progress=False)
    return {"folder": str(folder), "checkpoint": summary["checkpoint"], "config": cfg}


def batch(shape, seed=0):
    """A fixed float32 Tensor batch in [-1, 1]."""
    return ms.Tensor(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def assert_figure(path, min_pixels=100):
    """A PNG that a person could look at: at least ``min_pixels`` on each side, and not blank (some of it drawn in
    more than a handful of colours)."""
    import matplotlib.image as mpimg  # pylint: disable=import-outside-toplevel
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and min(img.shape[:2]) >= min_pixels, (path, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    drawn = (rgb < 0.95).any(axis=1).mean()
    colours = len(np.unique((rgb * 255).astype(np.uint8), axis=0))
    assert drawn > 0.01 and colours > 8, (path, drawn, colours)
