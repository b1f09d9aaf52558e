"""The path users run: default compile settings, the shipped experiments, bf16 and device = "auto".

Elsewhere run-level tests set ``train.compile = false``; here ``python -m craft``
compiles its step with inductor and donates it (on the CPU), as it does by default.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import ROOT, final_params, run_cli

from craft import run
from craft.config import load
from craft.data import DATASETS
from craft.data.shapes import write_shapes_folder
from craft.logging import read_metrics

STEPS = 6
TINY = """
name = "tiny"
seed = 0
out_dir = "{out}"

[model]
kind = "cnn"
num_classes = 7

[data]
kind = "image_folder"
path = "{data}"
batch_size = 8
image_size = 32

[optim]
kind = "adamw"
lr = 3e-3
clip_norm = 1.0

[train]
steps = {steps}
eval_every = 100
log_every = 1
checkpoint_every = 3
"""
# bf16 against float32 (eager both); the default experiment's own compiled runs come first below.


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "shapes"
    return write_shapes_folder(folder, num_train=56, num_val=16, image_size=32, seed=0)


def experiment(folder: Path, shapes: Path, steps: int = STEPS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.toml"
    path.write_text(TINY.format(out=folder / "runs", data=shapes, steps=steps))
    return path


DEFAULT = ROOT / "experiments" / "custom_cnn.toml"


def default_run(folder: Path, shapes: Path, steps: int = STEPS) -> list[str]:
    """``python -m craft``'s arguments for the shipped default experiment, as shipped (inductor, donated,
    AdamW with clipping, warmup and cosine) on the small folder in batches of 8. ``schedule.total_steps``
    stays STEPS, so a run stopped early has the learning rates of the unbroken one."""
    return [
        str(DEFAULT), f"--out_dir={folder / 'runs'}", f"--data.path={shapes}", "--data.batch_size=8",
        f"--train.steps={steps}", f"--schedule.total_steps={STEPS}", "--train.eval_every=100", "--train.log_every=1",
        "--train.checkpoint_every=3",
    ]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory, shapes) -> Path:
    """An unbroken run of the default experiment, through the CLI."""
    folder = tmp_path_factory.mktemp("compiled")
    result = run_cli(*default_run(folder, shapes))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiling the train step" in result.stdout + result.stderr  # the default: compiled
    return folder / "runs" / "custom_cnn"


@pytest.mark.slow
def test_the_default_compiled_run_ends_where_the_eager_run_does(compiled_run, tmp_path, shapes):
    eager = run_cli(*default_run(tmp_path, shapes), "--train.compile=false")
    assert eager.returncode == 0, eager.stderr[-3000:]
    expected, got = final_params(tmp_path / "runs" / "custom_cnn"), final_params(compiled_run)
    # Inductor fuses and reorders float32 sums, so results differ by rounding: ~1e-7 relative per
    # op, compounded over 6 AdamW steps (whose normalized updates amplify tiny gradients). A wrong
    # donation or a stale buffer shows up as differences of the order of lr = 3e-3.
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.slow
def test_a_compiled_run_stopped_and_resumed_is_bitwise_the_unbroken_one(compiled_run, tmp_path, shapes):
    stopped = run_cli(*default_run(tmp_path, shapes, steps=STEPS // 2))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    resumed = run_cli(*default_run(tmp_path, shapes), "--resume")  # the run had 3 steps; now STEPS
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "custom_cnn"
    steps = [e["step"] for e in read_metrics(run_dir) if e["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # continued from step 3, not restarted
    newest = lambda d: sorted((d / "checkpoints").glob("step_*.pt"))[-1]  # noqa: E731
    a = torch.load(newest(run_dir), weights_only=True)["state"]
    b = torch.load(newest(compiled_run), weights_only=True)["state"]
    flat_a, flat_b = torch.utils._pytree.tree_flatten(a), torch.utils._pytree.tree_flatten(b)
    assert flat_a[1] == flat_b[1]  # the same tree: params, buffers, optimizer state, step
    for x, y in zip(flat_a[0], flat_b[0]):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


# -- every shipped experiment loads and runs ---------------------------------

EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.toml"))
SMALL_DATA = {
    "image_folder": {"data.batch_size": 8},  # data.path: the test's folder
    "shapes": {"data.num_train": 32, "data.num_val": 16, "data.batch_size": 8},
    "shape_captions": {"data.num_train": 32, "data.num_val": 16, "data.batch_size": 8},
    "text": {"data.batch_size": 4},  # data.path: a small corpus (the default one takes seconds to read)
    # data.path: tokens prepared from a small corpus; a short context (the model's default is 64)
    "tokens": {"data.batch_size": 4, "data.eval_batch_size": 4, "data.block_size": 32, "data.val_windows": 2},
}


def shortened(name: str, tmp_path: Path, shapes: Path) -> dict:
    """Overrides that keep ``name`` the same experiment, two steps long on tiny data."""
    raw = tomllib.loads((ROOT / "experiments" / f"{name}.toml").read_text())
    if raw["data"]["kind"] not in DATASETS:  # a kind another branch registers (merged later)
        pytest.skip(f"data kind {raw['data']['kind']!r} is not registered")
    overrides = {
        "out_dir": str(tmp_path), "train.steps": 2, "train.eval_every": 2, "train.log_every": 1,
        "train.eval_batches": 1, "train.compile": False,  # the default experiment's compiled run is above
        **SMALL_DATA[raw["data"]["kind"]],
    }
    if raw["data"]["kind"] == "image_folder":
        overrides["data.path"] = str(shapes)
    if raw["data"]["kind"] == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("The cat sat on the mat. The dog sat on the log.\n" * 200)  # the shipped prompt is "The "
        overrides["data.path"] = str(corpus)
    if raw["data"]["kind"] == "tokens":
        pytest.importorskip("tokenizers")
        from craft.data.prepare_tokens import prepare_tokens

        corpus = tmp_path / "corpus.py"
        corpus.write_text("def f(x):\n    return x + 1\nvalue = f(2)\n" * 200)  # the shipped prompt is "def "
        prepare_tokens([str(corpus)], str(tmp_path / "tokens"), vocab_size=300)
        overrides["data.path"] = str(tmp_path / "tokens")
        if raw["train"].get("accum_steps", 1) > 1:
            overrides["train.accum_steps"] = 2  # still accumulates, over the small batch
    if raw["model"].get("n_layer", 0) > 4:  # GPT-2 sized: the same recipe at a toy width
        overrides.update({"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32})
    if raw["model"]["kind"] == "char_lstm":
        overrides["model.hidden_dim"] = 32  # an LSTM's backward under torch.func is slow on the CPU
    if "sample" in raw.get("train", {}):
        overrides["train.sample.max_new_tokens"] = 4
    return overrides


def quiet(*args) -> None:
    pass


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_shipped_experiment_loads_and_trains(name, tmp_path, shapes):
    exp = load(ROOT / "experiments" / f"{name}.toml", shortened(name, tmp_path, shapes))
    run_dir = run.train(exp, echo=quiet)
    events = read_metrics(run_dir)
    train = [e for e in events if e["split"] == "train"]
    assert [e["step"] for e in train] == [1, 2]
    assert all(math.isfinite(e["metrics"]["loss"]) for e in train)
    assert any(e["split"] == "val" for e in events)
    assert (run_dir / "config.toml").exists() and final_params(run_dir)


def test_bf16_on_device_auto_trains_near_the_fp32_run(tmp_path, shapes):
    def train(name: str, **overrides) -> dict:
        exp = load(experiment(tmp_path / name, shapes, steps=3), {"train.compile": False, **overrides})
        return final_params(run.train(exp, echo=quiet))

    fp32 = train("fp32")
    bf16 = train("bf16", **{"train.precision": "bf16", "train.device": "auto"})
    assert all(v.dtype == torch.float32 for v in bf16.values())  # autocast: the params stay float32
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32)  # bf16 was applied
    for k, v in fp32.items():  # bf16 rounds activations to ~3 digits: close, not equal
        torch.testing.assert_close(bf16[k], v, rtol=0.05, atol=0.02, msg=lambda m, k=k: f"{k}: {m}")
