"""The words a user reads: counts in the right number, titles that say what happened."""

from __future__ import annotations

from conftest import make_config

from swin_cli.text import plural


def test_plural_says_1_epoch_and_2_epochs():
    assert [plural(n, "epoch") for n in (0, 1, 2, 1.0, 0.5, 1500)] == [
        "0 epochs", "1 epoch", "2 epochs", "1 epoch", "0.5 epochs", "1,500 epochs"]
    assert plural(1, "sweep job") == "1 sweep job" and plural(3, "process", "processes") == "3 processes"


def test_start_panel_counts_in_the_right_number():
    from swin_cli.build import build_model
    from swin_cli.summary import start_panel

    cfg = make_config("data=digits", "epochs=1", "scheduler.warmup_epochs=1", "model.depths=[1]",
                      "model.num_heads=[2]", "model.embed_dim=8", "data.image_size=8")
    data = type("Data", (), {"sizes": lambda self: "train 1 / val 0 / test 1", "num_classes": 10, "in_chans": 1,
                             "storage": "memory", "storage_reason": "a test"})()
    panel = start_panel(cfg, build_model(cfg.model, 8, 1, 10), data, "run", "cpu, 1 thread", 1, 64)
    recipe = panel.split("resolved config")[0]
    assert "1 epoch x 1 step of 64" in recipe and "warmup 1 epoch" in recipe
    assert "epochs" not in recipe and "steps" not in recipe


def test_preview_title_names_the_augmentation_applied_not_the_preset():
    from swin_cli.preview import preview_title

    # digits selects aug=none; asking for TrivialAugment on top of it applies TrivialAugment.
    cfg = make_config("data=digits", "aug.auto_augment=trivialaugment")
    assert cfg.aug.name == "none"
    assert preview_title(cfg.aug) == "training batch after trivialaugment"
    assert preview_title(make_config("data=digits").aug) == "training batch, no augmentation"
    assert preview_title(make_config("aug=basic").aug) == "training batch after crop pad 4, hflip"


def test_readme_commands_use_no_folder_a_new_user_lacks():
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    commands = "\n".join(re.findall(r"```bash\n(.*?)```", readme, re.S))
    assert "../shared" not in commands  # the developers' own data folder
    # The placeholder the commands use instead is explained, with how to make the folder.
    assert "data.root=path/to/cifar10-jpg" in commands
    section = readme.split("#### An image-folder CIFAR-10", 1)[1].split("\n#", 1)[0]
    assert "`path/to/cifar10-jpg`" in section and "CIFAR10(" in section and "train/<class>/" in section
