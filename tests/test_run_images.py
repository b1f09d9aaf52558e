"""Training on a user's own image folder through the real CLI: what the run says it read, a file that
stops decoding mid-run, and evaluating with image options the model cannot take."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import torch
from PIL import Image, ImageOps

from conftest import run_cli, tiny_cnn

TRAIN = """
[train]
steps = {steps}
eval_every = 100
log_every = 100
compile = false
"""


def noise_image(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    Image.fromarray(pixels.numpy()).save(path)


def folder(root: Path, per_class: int = 4, suffixes: tuple[str, ...] = (".png",)) -> Path:
    for c, name in enumerate(("cat", "dog")):
        for k in range(per_class):
            noise_image(root / name / f"{k}{suffixes[k % len(suffixes)]}", 100 * c + k)
    return root


def experiment(tmp_path: Path, data: Path, steps: int) -> Path:
    toml = tmp_path / "cnn.toml"
    toml.write_text(tiny_cnn(TRAIN.format(steps=steps)).format(out=tmp_path / "runs", data=data))
    return toml


@pytest.mark.parametrize("sweep", [[], ["--sweep.optim.lr=[0.001,0.01]"]], ids=["run", "sweep"])
def test_the_run_says_what_each_split_read_and_what_it_left_out(tmp_path, sweep):
    data = folder(tmp_path / "photos", per_class=8, suffixes=(".png", ".JPG", ".webp", ".bmp"))
    (data / "cat" / "notes.txt").write_text("not an image")
    (data / "dog" / "Thumbs.db").write_bytes(b"\0")
    result = run_cli(str(experiment(tmp_path, data, 2)), "--data.val_fraction=0.25", "--data.batch_size=4", *sweep)
    assert result.returncode == 0, result.stderr[-2000:]
    said = [line for line in result.stdout.splitlines() if line.startswith(("train data:", "val data:"))]
    assert [line.split(":")[0] for line in said] == ["train data", "val data"], result.stdout
    for line, count in zip(said, (12, 4)):
        assert line.startswith(f"{line.split(':')[0]}: {count} images in {data} (") and "JPEG" in line, line
    # what the folder left out is said once, on the train line: the val line does not repeat it
    assert said[0].endswith(("left out 1 .txt file, 1 .db file", "left out 1 .db file, 1 .txt file")), said[0]
    assert "left out" not in said[1], said[1]


@pytest.mark.parametrize("sweep", [[], ["--sweep.optim.lr=[0.001,0.01]"]], ids=["run", "sweep"])
def test_an_image_that_does_not_decode_mid_run_saves_the_last_step_and_the_run_resumes(tmp_path, sweep):
    data = folder(tmp_path / "photos", per_class=8)
    val = folder(tmp_path / "val", per_class=1)
    bad = data / "dog" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = experiment(tmp_path, data, 30)
    config.write_text(config.read_text().replace("[data]\n", f'[data]\nval_path = "{val}"\n'))  # val never reads it
    result = run_cli(str(config), "--data.batch_size=2", *sweep)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    error = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    match = re.search(r"9\.png \(.*\); replace or delete it; the run is saved in (\S+step_(\d+)\.pt): after fixing the "
                      r"data, resume with: craft train (\S+) --resume \(a new run with data\.skip_unreadable", error)
    assert match, error
    saved, step, run_dir = Path(match.group(1)), int(match.group(2)), Path(match.group(3))
    assert saved.exists() and 0 < step < 30  # no checkpoint was due before the end: without this, every step was lost
    bad.unlink()
    result = run_cli(str(run_dir), "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"from {saved.name} (step {step})" in result.stdout and (run_dir / "checkpoints" / "step_00000030.pt").exists()


def test_evaluate_with_an_image_size_the_model_cannot_take_is_one_line(tmp_path):
    data = folder(tmp_path / "photos")
    result = run_cli(str(experiment(tmp_path, data, 1)), "--data.val_fraction=0.25", "--data.batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("evaluate", str(tmp_path / "runs" / "cnn"), "--data.image_size=3")  # under the 4x4 it needs
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed on the first batch" in errors[0], result.stderr
    assert errors[0].endswith("check data.image_size and data.channels against what the model takes"), errors[0]


def test_skipped_unreadable_images_are_one_warning_line_each_split(tmp_path):
    data = folder(tmp_path / "photos", per_class=6)
    (data / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (data / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    result = run_cli(str(experiment(tmp_path, data, 1)), "--data.val_path=" + str(data), "--data.batch_size=2",
                     "--data.skip_unreadable=true")
    assert result.returncode == 0, result.stderr[-2000:]
    warned = [line for line in result.stderr.splitlines() if "unreadable" in line]
    assert warned and all(w.startswith("warning: skipped 2 unreadable of 14 images in ") for w in warned), warned
    assert "UserWarning" not in result.stderr and "drop_unreadable(" not in result.stderr, result.stderr


def test_a_classifier_on_one_class_folder_is_warned(tmp_path):
    data = tmp_path / "photos"
    for k in range(4):
        noise_image(data / "cat" / f"{k}.png", k)
    result = run_cli(str(experiment(tmp_path, data, 1)), f"--data.val_path={data}", "--data.batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: the train data has one class ('cat'): a classifier learns nothing" in result.stdout, result.stdout


def test_the_class_names_are_kept_exported_and_checked_when_evaluating_other_data(tmp_path):
    data = folder(tmp_path / "photos")
    (data / "dog").rename(data / "big dög")
    result = run_cli(str(experiment(tmp_path, data, 1)), "--data.val_fraction=0.25", "--data.batch_size=2")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "runs" / "cnn"
    assert json.loads((run_dir / "classes.json").read_text(encoding="utf-8")) == ["big dög", "cat"]  # output order
    assert run_cli("export", str(run_dir), str(tmp_path / "out")).returncode == 0
    assert (tmp_path / "out" / "classes.json").read_bytes() == (run_dir / "classes.json").read_bytes()
    test = tmp_path / "test"
    for k in range(2):
        noise_image(test / "cat" / f"{k}.png", 50 + k)
    same = run_cli("evaluate", str(run_dir), f"--data.val_path={test}")  # classes from the run's data.path
    assert same.returncode == 0, same.stderr[-2000:]
    other = run_cli("evaluate", str(run_dir), f"--data.path={test}", f"--data.val_path={test}")
    assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "error: the data's classes differ from the run's (classes.json: 2 classes): it lacks ['big dög']" in other.stderr


@pytest.mark.parametrize("sweep", [[], ["--sweep.optim.lr=[0.001,0.01]"]], ids=["run", "sweep"])
def test_resume_on_a_folder_whose_classes_changed_is_refused(tmp_path, sweep):
    """A class folder renamed (or added) since the run started moves every label to another class: resuming on it
    trained the head against the wrong names, and rewrote classes.json to say so, without a word."""
    data = folder(tmp_path / "photos")
    exp = str(experiment(tmp_path, data, 2))
    assert run_cli(exp, "--data.val_fraction=0.25", "--data.batch_size=2", *sweep).returncode == 0
    classes = tmp_path / "runs" / "cnn" / ("members/000/classes.json" if sweep else "classes.json")
    saved = classes.read_bytes()
    (data / "dog").rename(data / "zebra")  # ['cat', 'dog'] becomes ['cat', 'zebra']
    again = run_cli(str(tmp_path / "runs" / "cnn"), "--resume", "--train.steps=4")
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert again.stderr.splitlines()[0] == (
        "error: cannot resume: the data's classes differ from the run's (classes.json: 2 classes): it lacks ['dog'], "
        "so its labels mean other classes; resume on the data the run trained on, or start a new run"
    )
    assert classes.read_bytes() == saved


def test_export_writes_the_preprocessing_another_tool_needs_and_it_gives_craft_s_eval_input(tmp_path):
    """Without preprocessing.json an exported classifier is fed pixels it never saw (no resize, no normalisation)."""
    import torchvision.transforms.v2.functional as F

    from craft import trained
    from craft.config import load
    from craft.parts import build_data

    data = folder(tmp_path / "photos")
    crop = ["--data.image_size=24", "--data.augment.random_resized_crop.size=20", "--data.mean=[0.4,0.5,0.6]",
            "--data.std=[0.2]"]
    result = run_cli(str(experiment(tmp_path, data, 1)), f"--data.val_path={data}", "--data.batch_size=2", *crop)
    assert result.returncode == 0, result.stderr[-2000:]
    out = trained.export(tmp_path / "runs" / "cnn", tmp_path / "out")
    recipe = json.loads((out / "preprocessing.json").read_text(encoding="utf-8"))
    assert recipe["resize"] == [24, 24] and recipe["center_crop"] == [20, 20] and recipe["std"] == [0.2] * 3

    first = sorted((data / "cat").iterdir())[0]  # the val split's first image: classes in order, files sorted
    image = ImageOps.exif_transpose(Image.open(first)) if recipe["exif_transpose"] else Image.open(first)
    pixels = F.pil_to_tensor(image.convert(recipe["mode"]))
    pixels = F.center_crop(F.resize(pixels, recipe["resize"], antialias=recipe["antialias"]), recipe["center_crop"])
    followed = F.normalize(pixels.float() * recipe["rescale_factor"], recipe["mean"], recipe["std"])
    exp = load(tmp_path / "runs" / "cnn" / "config.toml")
    craft_input = next(iter(build_data(exp, "val")))["image"][0]
    torch.testing.assert_close(followed, craft_input, atol=1e-5, rtol=0)
