import pytest

from ddpm_ms.config import Config, ConfigError, load_config


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_are_the_tutorial():
    cfg = load_config()
    assert cfg.model.dim == 28 and cfg.model.dim_mults == (1, 2, 4) and cfg.model.channels == 1
    assert cfg.diffusion.timesteps == 200 and cfg.diffusion.beta_schedule == "linear"
    assert cfg.diffusion.loss_type == "huber"
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr, cfg.train.min_lr) == (16, 10, 1e-4, 1e-7)
    assert (cfg.train.loss_scale, cfg.train.scale_factor, cfg.train.scale_window) == (65536, 2, 1000)


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.batchsize'"):
        load_config(_write(tmp_path, "train:\n  batchsize: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown config section 'optim'"):
        load_config(_write(tmp_path, "optim:\n  lr: 3\n"))


@pytest.mark.parametrize("text,key", [
    ("train:\n  batch_size: 0\n", "train.batch_size"),
    ("train:\n  batch_size: many\n", "train.batch_size"),
    ("model:\n  dim_mults: [1, two]\n", "model.dim_mults"),
    ("diffusion:\n  beta_schedule: exp\n", "diffusion.beta_schedule"),
    ("diffusion:\n  loss_type: l3\n", "diffusion.loss_type"),
    ("data:\n  image_size: 30\nmodel:\n  dim_mults: [1, 2, 4]\n", "data.image_size"),
    ("train:\n  jit: 1\n", "train.jit"),
    ("train:\n  sample_sampler: plms\n", "train.sample_sampler"),
    ("train:\n  sample_steps: 0\n", "train.sample_steps"),
    ("train:\n  sample_sampler: ddim\n  sample_steps: 500\n", "train.sample_steps"),
    ("diffusion:\n  objective: score\n", "diffusion.objective"),
    ("diffusion:\n  loss_weighting: snr\n", "diffusion.loss_weighting"),
    ("diffusion:\n  loss_weighting: min_snr\n  min_snr_gamma: 0\n", "diffusion.min_snr_gamma"),
    ("diffusion:\n  p2_gamma: 1.0\n", "diffusion.p2_gamma"),                       # only read by p2
    ("diffusion:\n  loss_weighting: p2\n  min_snr_gamma: 3\n", "diffusion.min_snr_gamma"),
    ("diffusion:\n  loss_weighting: edm\n  edm_p_std: 0\n", "diffusion.edm_p_std"),
    ("diffusion:\n  loss_weighting: none\n  edm_sigma_data: 1.0\n", "diffusion.edm_sigma_data"),
    ("data:\n  index_range: [5000, 100]\n", "data.index_range"),
    ("data:\n  index_range: [0, 100, 200]\n", "data.index_range"),
    ("data:\n  index_range: [0, 100]\n  num_samples: 200\n", "data.num_samples"),
    ("train:\n  eval_every: -1\n", "train.eval_every"),
    ("train:\n  eval_num: 1\n", "train.eval_num"),
    ("data:\n  dataset: image_folder\n  root: pics\ntrain:\n  eval_every: 1\n", "train.eval_every"),
])
def test_bad_values_are_named(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "train: [unclosed\n"))


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config(None, ["train.batch_size=32", "model.dim_mults=[1,2]", "train.lr=2e-4", "data.root=/x"])
    assert cfg.train.batch_size == 32 and cfg.model.dim_mults == (1, 2) and cfg.train.lr == 2e-4
    out = tmp_path / "saved.yaml"
    cfg.dump(out)
    assert load_config(str(out)) == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.batch_size"])


def test_shipped_configs_load():
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        assert isinstance(load_config(str(f)), Config)


def test_bare_name_finds_bundled_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("fashion.yaml").train.out_dir == "runs/fashion"
    assert load_config("fashion_cpu").model.block_type == "resnet"
    (tmp_path / "fashion.yaml").write_text("train:\n  epochs: 3\n")
    assert load_config("fashion.yaml").train.epochs == 3            # a file in the working folder wins
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


@pytest.mark.parametrize("key", ["beta_start", "beta_end"])
def test_cosine_schedule_refuses_a_beta_range(key):
    """beta_start/beta_end would be silently ignored by the cosine schedule."""
    value = {"beta_start": 1e-3, "beta_end": 0.05}[key]
    with pytest.raises(ConfigError, match=rf"'diffusion\.{key}' is not used by diffusion\.beta_schedule='cosine'"):
        load_config(None, ["diffusion.beta_schedule=cosine", f"diffusion.{key}={value}"])
    assert load_config(None, ["diffusion.beta_schedule=cosine"]).diffusion.beta_end == 0.02   # the default passes
    assert load_config(None, [f"diffusion.{key}={value}"]).diffusion.beta_schedule == "linear"


@pytest.mark.parametrize("overrides,keys", [
    (["model.channels=3"], ("model.channels", "data.dataset")),
    (["data.image_size=32", "model.dim_mults=[1,2]"], ("data.image_size", "data.dataset")),
    (["model.num_classes=5"], ("model.num_classes", "data.dataset")),
])
def test_fashion_mnist_must_fit_the_model(overrides, keys):
    from ddpm_ms.data import check_data_fits_model
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError) as err:
        check_data_fits_model(cfg.data, cfg.model)
    assert all(k in str(err.value) for k in keys), str(err.value)
    good = load_config(None, ["model.num_classes=10"])
    check_data_fits_model(good.data, good.model)


def test_image_folder_must_fit_the_model(tmp_path):
    from ddpm_ms.data import check_data_fits_model
    for cls in ("cats", "dogs", "empty"):
        (tmp_path / cls).mkdir()
    for cls in ("cats", "dogs"):
        (tmp_path / cls / "a.png").write_bytes(b"")
    base = ["data.dataset=image_folder", f"data.root={tmp_path}", "data.image_size=32"]
    for extra, key in ((["model.channels=1"], "model.channels"), (["model.channels=3", "model.num_classes=3"],
                                                                 "model.num_classes")):
        cfg = load_config(None, base + extra)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*2 class sub-folders"):
            check_data_fits_model(cfg.data, cfg.model)
    cfg = load_config(None, base + ["model.channels=3", "model.num_classes=2"])   # 'empty' holds no image
    check_data_fits_model(cfg.data, cfg.model)
