"""The words a user reads: counts in the right number, titles that say what happened."""

from __future__ import annotations

import ast
import re

from conftest import make_config

from swin_cli.text import plural


def test_plural_says_1_epoch_and_2_epochs():
    assert [plural(n, "epoch") for n in (0, 1, 2, 1.0, 0.5, 1500)] == [
        "0 epochs", "1 epoch", "2 epochs", "1 epoch", "0.5 epochs", "1,500 epochs"]
    assert plural(1, "sweep job") == "1 sweep job" and plural(3, "process", "processes") == "3 processes"
    assert [plural(2, w) for w in ("class", "process", "entry", "day", "batch", "timed step")] == [
        "2 classes", "2 processes", "2 entries", "2 days", "2 batches", "2 timed steps"]
    assert plural(2, "epoch") == "2 epochs" and plural(2, "box") == "2 boxes"


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

    # aug=auto gives digits no crop or flip; asking for TrivialAugment on top of it applies TrivialAugment.
    cfg = make_config("data=digits", "aug.auto_augment=trivialaugment")
    assert cfg.aug.name == "auto"
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


# A count: len(...) or a name such as n, todo, count, steps, num_classes, per_node, processes.
COUNT = re.compile(r"^len\(|(^|[._])(n|count|total|todo|\w*steps|\w*epochs|\w*images|classes|processes|per_node"
                   r"|num_\w+)$")


def counted_plurals(source: str) -> list[tuple[int, str, str]]:
    """(line, count, noun) for each f-string that puts a count straight before a plural noun,
    "{len(files)} files", instead of through plural(). "done/{total} steps" (a fraction) is fine."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.JoinedStr):
            continue
        parts = node.values
        for before, value, after in zip([None, *parts], parts, [*parts[1:], None]):
            if not (isinstance(value, ast.FormattedValue) and isinstance(after, ast.Constant)):
                continue
            noun = re.match(r" ([a-z]+s)\b", after.value)
            fraction = isinstance(before, ast.Constant) and before.value.endswith("/")
            count = ast.unparse(value.value)
            if noun and not fraction and COUNT.search(count):
                found.append((node.lineno, count, noun.group(1)))
    return found


def test_the_plural_scan_finds_a_bare_count_and_passes_plural():
    assert counted_plurals('log(f"decoding {len(samples):,} images of {where}")') == [(1, "len(samples)", "images")]
    assert counted_plurals('f"warm-up for {r.warmup_steps} steps"') == [(1, "r.warmup_steps", "steps")]
    assert counted_plurals('f"decoding {plural(len(samples), \'image\')} of {where}"') == []
    assert counted_plurals('f"{done}/{phase.steps} steps, {ms:.1f} ms"') == []


def test_no_count_in_swin_cli_reaches_a_plural_noun_without_plural():
    from conftest import ROOT

    bare = [(str(path.relative_to(ROOT)), *hit) for path in sorted((ROOT / "swin_cli").rglob("*.py"))
            for hit in counted_plurals(path.read_text())]
    assert bare == [], "say these through swin_cli.text.plural: " + "; ".join(map(str, bare))


def test_the_decode_log_names_held_out_val_and_the_val_folder_as_test_apart(tmp_path, caplog):
    from test_data import folder_config, write_folder

    from swin_cli.data import load_data

    root = write_folder(tmp_path / "folder", splits=("train", "val"), per_class=1)
    with caplog.at_level("INFO"):
        load_data(folder_config(root, tmp_path, "data.val_fraction=0.5"))
    decoded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding")]
    assert len(decoded) == 3, decoded
    train, val, test = decoded
    assert train.startswith("decoding 1 image of ") and train.endswith(" train into memory")
    assert val.endswith(" val (held out of train) into memory")
    assert test.startswith("decoding 2 images of ") and test.endswith(" test (the val/ folder) into memory")
