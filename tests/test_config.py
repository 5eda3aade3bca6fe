"""The config tree composes, presets match the paper, and bad values fail with a named key."""

from __future__ import annotations

import pytest
from conftest import CONF, make_config

from swin_cli.config import ConfigError, validate

PAPER = {  # Liu et al. 2021, Table 1 (embed dim C, layer numbers, heads)
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_presets(name):
    cfg = make_config(f"model={name}")
    embed, depths, heads = PAPER[name]
    assert (cfg.model.embed_dim, list(cfg.model.depths), list(cfg.model.num_heads)) == (embed, depths, heads)
    assert (cfg.model.patch_size, cfg.model.window_size) == (4, 7)
    validate(cfg)


def test_nano_is_the_notebook_model():
    cfg = make_config()
    m = cfg.model
    assert (m.patch_size, m.embed_dim, list(m.depths), list(m.num_heads), m.window_size) == \
        (2, 24, [2, 2, 2], [4, 4, 4], 4)
    # The digits' size is left to the source, which keeps the 32 px it has always trained at.
    assert cfg.data.image_size is None
    from swin_cli.data import settle_auto

    settle_auto(cfg)
    assert cfg.data.image_size == 32


def test_every_model_field_overridable():
    cfg = make_config("model.window_size=2", "model.depths=[2,2,6,2]", "model.num_heads=[3,6,12,24]",
                      "model.embed_dim=48", "model.drop_path_rate=0.1")
    assert list(cfg.model.depths) == [2, 2, 6, 2] and cfg.model.embed_dim == 48 and cfg.model.window_size == 2
    validate(cfg)


def test_digits_picks_no_aug_but_command_line_wins():
    from swin_cli.data import settle_auto

    def settled(*overrides):
        cfg = make_config(*overrides)
        settle_auto(cfg)
        return cfg.aug

    digits = settled("data=digits")
    assert digits.name == "auto" and (digits.crop_padding, digits.hflip) == (0, False)
    assert settled("data=digits", "aug=basic").hflip is True
    cifar = settled("data=cifar10")  # not read: CIFAR's channels are its registry entry's
    assert (cifar.crop_padding, cifar.hflip) == (4, True)


def test_unknown_key_and_wrong_type_rejected_by_schema():
    with pytest.raises(Exception, match="foo"):
        make_config("model.foo=1")
    with pytest.raises(Exception, match="window_size"):
        make_config("model.window_size=big")
    with pytest.raises(Exception) as info:
        make_config("optimizer.name=lion")
    assert "expected one of [adamw, adam, sgd]" in str(info.value.__cause__)  # the allowed values


@pytest.mark.parametrize("overrides, message", [
    (["epochs=0"], "epochs must be >= 1"),
    (["optimizer.lr=0"], "optimizer.lr must be > 0"),
    (["model.window_size=0"], "model.window_size must be >= 1"),
    (["model.stem=conv", "model.stem_convs=0"], "model.stem_convs must be >= 1"),
    (["model.num_heads=[5,4,4]"], "model.num_heads[0]=5 must divide the stage 0 width 24"),
    (["data.image_size=33"], "data.image_size=33 is not divisible by model.patch_size=2"),
    (["model.depths=[2,2]"], "model.depths and model.num_heads must have the same length"),
    (["model.drop_path_rate=1.5"], "model.drop_path_rate must be in [0, 1)"),
    (["data=imagefolder"], "data=imagefolder needs data.root"),
    (["data.val_fraction=1.0"], "data.val_fraction must be in [0, 1)"),
    (["train.time_limit_min=0"], "train.time_limit_min must be > 0 or null"),
    (["train.compile_optimizer=true", "train.precision=fp16"],
     "train.compile_optimizer does not work with train.precision=fp16"),
])
def test_out_of_range_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(make_config(*overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_experiment_seed_pins_the_notebook_recipe_and_data_can_be_swapped():
    cfg = make_config("experiment=cifar10_seed", "data=imagefolder", "data.root=/somewhere")
    assert cfg.model.name == "nano" and cfg.model.drop_path_rate == 0.0
    assert (cfg.optimizer.name.value, cfg.optimizer.lr, cfg.data.batch_size, cfg.epochs) == ("adam", 1e-4, 16, 10)
    assert list(cfg.data.mean) == [0.5] * 3 and cfg.data.val_fraction == 0.2 and cfg.aug.name == "none"
    assert cfg.data.name == "imagefolder" and cfg.scheduler.name.value == "constant"
    validate(cfg)


def test_experiment_nano_composes():
    cfg = make_config("experiment=cifar10_nano")
    assert cfg.data.name == "cifar10" and cfg.aug.name == "none" and cfg.data.batch_size == 32
    assert (cfg.optimizer.name.value, cfg.optimizer.lr, cfg.scheduler.warmup_epochs) == ("adamw", 2e-3, 0.5)
    assert (cfg.model.stem.value, cfg.model.stem_convs) == ("conv", 2)
    validate(cfg)


def test_experiment_swin_composes_lee_et_al_s_recipe_for_a_gpu():
    cfg = make_config("experiment=cifar10_swin")
    m = cfg.model
    assert (m.stem.value, m.patch_size, m.embed_dim, list(m.depths), list(m.num_heads), m.window_size,
            m.mlp_ratio, m.drop_path_rate) == ("conv", 2, 96, [2, 6, 4], [3, 6, 12], 4, 2.0, 0.1)
    assert cfg.train.precision.value == "bf16" and cfg.train.compile and cfg.train.ema.decay == 0.9998
    assert (cfg.aug.auto_augment.value, cfg.aug.autoaugment_policy.value, cfg.aug.mix_prob) == \
        ("autoaugment", "cifar10", 0.5)
    assert (cfg.data.repeats, cfg.epochs, cfg.optimizer.lr, cfg.train.label_smoothing) == (3, 100, 1e-3, 0.1)
    validate(cfg)


def test_experiment_cifar100_swin_is_the_same_recipe_on_cifar100_and_data_can_be_swapped():
    cfg, ten = make_config("experiment=cifar100_swin"), make_config("experiment=cifar10_swin")
    assert cfg.data.name == "cifar100"
    for key in ("model", "aug", "optimizer", "scheduler", "train", "epochs"):
        assert cfg[key] == ten[key], key
    assert (cfg.data.repeats, cfg.data.batch_size, cfg.data.val_fraction) == (3, 256, 0.04)
    assert make_config("experiment=cifar100_swin", "data=imagefolder", "data.root=/x").data.name == "imagefolder"
    validate(cfg)


def _options() -> list[tuple[str, str]]:
    """Every option of every config group in conf/, as (group, option)."""
    found = []
    for group in sorted(p for p in CONF.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        name = group.relative_to(CONF).as_posix()
        found += [(name, f.stem) for f in sorted(group.glob("*.yaml"))]
    return found


# Options that need a Hydra plugin from the `sweep` extra.
_PLUGINS = {("hparams_search", "cifar10_optuna"): "hydra_plugins.hydra_optuna_sweeper",
            ("hydra/launcher", "slurm"): "hydra_plugins.hydra_submitit_launcher"}


@pytest.mark.parametrize("group,option", _options(), ids=lambda v: str(v))
def test_every_config_option_composes_and_validates(group, option):
    if (group, option) in _PLUGINS:
        pytest.importorskip(_PLUGINS[group, option])
    if group.startswith("hydra"):  # Hydra's own settings: what they set is in the hydra node
        from hydra import compose, initialize_config_dir

        overrides = [f"{group}={option}"] if group != "hydra" else []
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            hydra_cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True).hydra
        assert hydra_cfg.job.name == "swin-train"
        assert group == "hydra" or "submitit" in hydra_cfg.launcher._target_
        return
    extra = {("data", "imagefolder"): ["data.root=/some/folder"],
             ("experiment", "finetune"): ["data.root=/some/folder"],
             ("experiment", "finetune_384"): ["data.root=/some/folder"],
             ("experiment", "imagenet_swin_t"): ["data.root=/some/folder"],
             ("data", "huggingface"): ["data.path=/some/folder"],
             ("data", "webdataset"): ["data.train_urls=/s/train.tar", "data.test_urls=/s/test.tar"],
             ("data", "csv"): ["data.train_table=/t/train.csv", "data.test_table=/t/test.csv"]}.get((group, option), [])
    cfg = make_config(f"{group}={option}", *extra)
    validate(cfg)
    if group in ("model", "data", "aug", "optimizer", "scheduler"):
        assert cfg[group].name == option


@pytest.mark.parametrize("overrides, first", [
    (["train.time_limit_min=0", "log.interval=0"], "log.interval"),  # the train checks run in two parts
    (["benchmark.steps=0", "train.early_stopping.patience=0"], "benchmark.steps"),
    (["aug.crop_padding=-1", "optimizer.lr=0", "model.drop_rate=1.5"], "model.drop_rate"),
    (["scheduler.pct_start=0", "data.val_fraction=1.0", "mode=predict"], "mode=predict"),
    (["threads=0", "log.tracking_uri=x"], "threads"),
])
def test_several_problems_report_the_first_in_the_order_validate_always_used(overrides, first):
    with pytest.raises(ConfigError) as info:
        validate(make_config(*overrides))
    assert str(info.value).startswith(first)


def test_config_groups_pickle_with_their_enums_found_where_they_are_named():
    # Worker processes get config values pickled: each choices() Enum must be importable by the
    # module and name pickle records (its group's module, not swin_cli.choices).
    import pickle

    from omegaconf import OmegaConf

    from swin_cli.config import OptimizerConfig, OptimizerName
    from swin_cli.data.schema import DataConfig, Storage

    for group in (OptimizerConfig(name=OptimizerName.sgd), DataConfig(name="csv", storage=Storage.stream)):
        node = OmegaConf.structured(group)
        assert pickle.loads(pickle.dumps(node)) == node
    assert pickle.loads(pickle.dumps(OptimizerName.sgd)) is OptimizerName.sgd
    assert (OptimizerName.__module__, Storage.__module__) == ("swin_cli.config.optim", "swin_cli.data.schema")


def test_one_plain_and_one_choices_for_the_whole_project():
    import swin_cli.choices
    import swin_cli.config
    import swin_cli.data.schema

    assert swin_cli.config.plain is swin_cli.data.schema.plain is swin_cli.choices.plain
    assert swin_cli.config.choices is swin_cli.choices.choices
    assert swin_cli.config.plain(swin_cli.config.Mode.eval) == "eval" and swin_cli.config.plain(3) == 3
