"""``craft evaluate`` reproduces what a run logged: the same figures from the same part of the val split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import evaluated_without_the_train_data, run_cli, shapes_folder
from craft import run, trained
from craft.config import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def limited_run(tmp_path_factory) -> Path:
    """The seed CNN, its evaluations limited to 2 of the 7 val batches (batches of 8, 7 classes x 8 images)."""
    root = tmp_path_factory.mktemp("limited")
    data = shapes_folder(root, num_train=56, num_val=56)
    exp = load(ROOT / "experiments" / "custom_cnn.toml", {
        "out_dir": str(root / "runs"), "data.path": str(data), "data.prepare": None, "data.batch_size": 8,
        "data.num_threads": 0, "train.steps": 4, "train.eval_every": 4, "train.log_every": 2,
        "train.eval_batches": 2, "train.compile": False,
    })
    return run.train(exp, echo=lambda *a, **k: None)


def last_val(run_dir: Path) -> dict[str, float]:
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["split"] == "val"][-1]["metrics"]


def test_evaluate_gives_the_runs_last_logged_figures_under_eval_batches(limited_run):
    evaluated = trained.evaluate(limited_run)
    logged = last_val(limited_run)
    assert evaluated.pop("step") == 4
    assert evaluated == pytest.approx(logged, rel=1e-6)
    whole = trained.evaluate(limited_run, whole_split=True)
    assert whole["loss"] != pytest.approx(logged["loss"], rel=1e-6)  # 16 of 56 images are another figure


def test_the_limited_evaluation_reads_every_class_not_the_first_batches(limited_run):
    """The 16 images of 2 batches are spread over the split: with images sorted by class, the first 16 were 2 classes."""
    exp, parts, state = trained.load_run(limited_run)
    val = run.build_data(exp, "val")
    labels = torch.cat([b["label"] for b in val.limited(2)])
    assert len(labels) == 16 and len(set(labels.tolist())) == 7
    model = trained.load_model(limited_run)
    images, targets = zip(*[(b["image"], b["label"]) for b in val])
    images, targets = torch.cat(images), torch.cat(targets)
    chosen = (2 * torch.arange(16) + 1) * len(targets) // 32  # the midpoints of 16 equal parts
    with torch.no_grad():
        logits = model(images[chosen])
    logged = last_val(limited_run)
    assert logged["loss"] == pytest.approx(F.cross_entropy(logits, targets[chosen]).item(), rel=1e-5)
    assert logged["accuracy"] == pytest.approx((logits.argmax(-1) == targets[chosen]).float().mean().item())


def test_craft_evaluate_says_which_part_it_read(limited_run):
    result = run_cli("evaluate", str(limited_run))
    assert result.returncode == 0, result.stderr
    assert "train.eval_batches = 2" in result.stderr and "--whole_split" in result.stderr
    printed = dict(zip(result.stdout.split()[::2], result.stdout.split()[1::2]))
    assert float(printed["loss"]) == pytest.approx(last_val(limited_run)["loss"], abs=1e-4)
    whole = run_cli("evaluate", str(limited_run), "--whole_split")
    assert whole.returncode == 0 and "eval_batches" not in whole.stderr


def test_checkpoint_paths_are_read_from_the_current_folder_or_the_run_folder(limited_run, tmp_path):
    """--checkpoint=runs/NAME/checkpoints/step_X.pt was looked up as a name inside checkpoints/, and refused by a line
    that listed the very file; a missing one is named as each path tried, for every command that takes it."""
    cwd = limited_run.parent.parent  # runs/NAME is a path from here
    run_dir = limited_run.relative_to(cwd)
    name = sorted(p.name for p in (limited_run / "checkpoints").glob("step_*.pt"))[-1]
    for given in (f"{run_dir}/checkpoints/{name}", f"checkpoints/{name}", name):
        result = run_cli("evaluate", str(run_dir), f"--checkpoint={given}", cwd=cwd)
        assert result.returncode == 0 and result.stdout.startswith("step 4  loss "), (given, result.stderr)
    exported = run_cli("export", str(run_dir), str(tmp_path / "out"), f"--checkpoint={run_dir}/checkpoints/{name}", cwd=cwd)
    assert exported.returncode == 0, exported.stderr
    for command in (["evaluate", str(run_dir)], ["export", str(run_dir), str(tmp_path / "none")]):
        missing = run_cli(*command, "--checkpoint=checkpoints/step_00000999.pt", cwd=cwd)
        assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
        assert (f"no file at 'checkpoints/step_00000999.pt' nor at '{run_dir}/checkpoints/step_00000999.pt'; "
                f"'{run_dir}/checkpoints' has: {name}") in missing.stderr.splitlines()[0]
    resumed = run_cli("train", str(run_dir), f"--checkpoint={name}", cwd=cwd)  # --resume --checkpoint rolls back
    assert resumed.returncode == 2 and f"--checkpoint={name} picks the checkpoint --resume continues from: add --resume" in resumed.stderr


def test_evaluate_on_other_data_says_what_it_read_and_its_mistakes_in_evaluate_s_terms(limited_run, tmp_path):
    """Other data printed only the metrics line; a val_path holding train/ and val/ was told to "rename them train/
    and val/", and a class the run never saw to be "added to train": neither is a fix for a test set."""
    data = Path(load(limited_run / "config.toml").data.config.path)
    other = run_cli("evaluate", str(limited_run), f"--data.val_path={data / 'val'}")
    assert other.returncode == 0, other.stderr
    assert f"val data: 56 images in {data / 'val'} (56 PNG)" in other.stderr.splitlines()
    parent = run_cli("evaluate", str(limited_run), f"--data.val_path={data}")
    assert parent.returncode == 1 and "Traceback" not in parent.stderr
    assert (f"error: --data.val_path {data} holds split folders (train, val), not class folders; evaluate on one of "
            f"them: --data.val_path={data / 'val'}") in parent.stderr
    shutil.copytree(data / "val" / "circle", tmp_path / "test" / "horse")
    unknown = run_cli("evaluate", str(limited_run), f"--data.val_path={tmp_path / 'test'}")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "error: the run was not trained on class 'horse' (its classes.json has 'arrow', 'circle', " in unknown.stderr
    assert unknown.stderr.splitlines()[0].endswith("; remove those images from the test set")


def test_evaluate_on_a_test_set_reads_only_it_with_the_run_s_classes(tmp_path):
    """evaluate --data.val_path=TEST needed the run's training folder still on disk ("data.path ... does not
    exist"), only to list its classes: classes.json gives them, and a test set of some classes scores the same."""
    data = shapes_folder(tmp_path, num_train=14, num_val=14)
    exp = load(ROOT / "experiments" / "custom_cnn.toml", {
        "out_dir": str(tmp_path / "runs"), "data.path": str(data), "data.prepare": None, "data.batch_size": 4,
        "data.num_threads": 0, "train.steps": 2, "train.eval_every": 2, "train.compile": False,
    })
    run_dir = run.train(exp, echo=lambda *a, **k: None)
    test = tmp_path / "test"
    for name in ("square", "star"):  # the run's classes 5 and 6 of 7, 0 and 1 of the test set's own
        shutil.copytree(data / "val" / name, test / name)
    with_train, alone, said = evaluated_without_the_train_data(run_dir, data, test)
    assert alone == pytest.approx(with_train, rel=1e-6)
    assert said == [f"val data: 4 images in {test} (4 PNG)"]
