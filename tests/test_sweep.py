"""Sweeps: ``[sweep]`` in TOML or on the command line, every member through one vmapped step."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import attrs
import pytest
import torch

from craft import run, trained
from craft.cli import main
from craft.config import ConfigError, Sweep, dumps, load, loads
from craft.sweep import member_experiment, members

TINY = """
name = "sweep"
seed = 0
out_dir = "{out}"

[model]
kind = "cnn"
num_classes = 3

[data]
kind = "shapes"
num_train = 64
num_val = 16
batch_size = 8
classes = ["circle", "square", "triangle"]

[optim]
kind = "adamw"
lr = 3e-3
weight_decay = 0.05
clip_norm = 1.0

[schedule]
kind = "warmup_cosine"
warmup_ratio = 0.25

[train]
steps = 4
eval_every = 4
log_every = 2
compile = false
"""


def _exp(tmp_path: Path, sweep: str = "", **overrides) -> object:
    return loads(TINY.format(out=tmp_path / "runs") + sweep, overrides)


def test_sweep_section_round_trips_and_takes_dotted_overrides(tmp_path):
    exp = _exp(tmp_path, '[sweep]\n"optim.lr" = [1e-3, 3e-3]\nseeds = 2\n')
    assert exp.sweep == Sweep({"optim.lr": [1e-3, 3e-3]}, seeds=2)
    assert loads(dumps(exp)) == exp
    overridden = _exp(tmp_path, '[sweep]\n"optim.lr" = [1e-3]\n', **{"sweep.optim.lr": [5e-4, 1e-3], "sweep.seeds": 3})
    assert overridden.sweep == Sweep({"optim.lr": [5e-4, 1e-3]}, seeds=3)
    nested = _exp(tmp_path, "[sweep.optim]\nweight_decay = [0, 0.1]\n")
    assert nested.sweep.values == {"optim.weight_decay": [0.0, 0.1]}
    # None leaves out the optional table, as for any other: the file's sweep becomes one run
    assert loads(TINY.format(out=tmp_path) + '[sweep]\nseeds = 2\n', {"sweep": None}).sweep is None


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ('"model.num_classes" = [3, 4]', "sweep.model.num_classes: cannot differ between members: it changes shapes"),
        ('"data.batch_size" = [8, 16]', "sweep.data.batch_size: cannot differ between members: it changes shapes"),
        ('"train.steps" = [4, 8]', "sweep.train.steps: cannot differ between members of one vmapped step"),
        ('"optim.lrr" = [1e-3]', "sweep.optim.lrr: unknown key; did you mean 'optim.lr'?"),
        # A key of the config that members cannot differ in is named as such, not as unknown.
        ('"optim.b1" = [0.9, 0.95]', "sweep.optim.b1: cannot differ between members of one vmapped step; sweep only "
         "optim.lr, optim.weight_decay or seeds = N (train one run per value of optim.b1)"),
        ('"schedule.min_lr" = [0, 1e-5]', "sweep.schedule.min_lr: cannot differ between members of one vmapped step"),
        ('"lr" = [1e-3]', "sweep.lr: unknown key; did you mean 'optim.lr'?"),
        ('"train.stpes" = [4, 8]', "sweep.train.stpes: unknown key"),
        ('"optim.lr" = []', "sweep.optim.lr: expected a non-empty list of numbers"),
        ("seeds = 0", "sweep.seeds: must be >= 1, got 0"),
    ],
)
def test_sweep_refuses_what_cannot_share_a_step_in_one_line(tmp_path, sweep, message):
    with pytest.raises(ConfigError) as info:
        _exp(tmp_path, f"[sweep]\n{sweep}\n")
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(message)


def test_a_list_of_learning_rates_says_the_sweep_takes_it(tmp_path):
    """``--optim.lr=3e-4,1e-3`` is a user after a sweep: 'expected float' alone does not say where it goes."""
    with pytest.raises(ConfigError) as info:
        loads(TINY.format(out=tmp_path / "runs"), texts={"optim.lr": "3e-4,1e-3"})
    assert info.value.problems == [
        "optim.lr: expected float, got [0.0003, 0.001]; to train one member per value in one process, "
        "give them to --sweep.optim.lr=[...] ([sweep] in TOML)"
    ]
    with pytest.raises(ConfigError, match=r"^train.steps: expected int, got \[1, 2\]$"):  # not sweepable: no hint
        loads(TINY.format(out=tmp_path / "runs"), texts={"train.steps": "[1,2]"})


def test_members_are_the_grid_times_the_seeds(tmp_path):
    exp = _exp(tmp_path, '[sweep]\n"optim.lr" = [1e-3, 3e-3]\n"optim.weight_decay" = [0, 0.1]\nseeds = 2\n')
    team = members(exp)
    assert len(team) == 8
    assert {(m.values["optim.lr"], m.values["optim.weight_decay"], m.seed) for m in team} == {
        (lr, wd, s) for lr in (1e-3, 3e-3) for wd in (0.0, 0.1) for s in (0, 1)
    }
    alone = member_experiment(exp, team[3])
    assert alone.sweep is None and alone.seed == team[3].seed and alone.optim.lr == team[3].values["optim.lr"]
    assert alone.optim.config.weight_decay == team[3].values["optim.weight_decay"]


def test_a_sweep_member_ends_where_training_it_alone_ends(tmp_path):
    """Members share the data order of the experiment's seed: member 1 (lr 1e-2, seed 0) is that run alone."""
    sweep = _exp(tmp_path, '[sweep]\n"optim.lr" = [3e-3, 1e-2]\n"optim.weight_decay" = [0.0, 0.1]\n')
    run_dir = run.train(sweep, echo=lambda *a: None)
    team = members(sweep)
    alone_exp = member_experiment(sweep, team[1])
    alone_dir = run.train(attrs.evolve(alone_exp, name="alone"), echo=lambda *a: None)

    ours = torch.load(next((run_dir / "members" / "001" / "checkpoints").glob("step_*.pt")), weights_only=True)
    theirs = torch.load(next((alone_dir / "checkpoints").glob("step_*.pt")), weights_only=True)
    for part in ("params", "buffers"):
        for k, v in theirs["state"][part].items():
            # float32; the weight decay is one multiply-add instead of a fused one
            torch.testing.assert_close(ours["state"][part][k], v, atol=1e-6, rtol=1e-5)
    for a, b in zip(ours["state"]["opt_state"].values(), theirs["state"]["opt_state"].values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [e for e in events if e["split"] == "val"]
    assert sorted(e["member"] for e in val) == [0, 1, 2, 3]
    assert {tuple(sorted(e["hparams"])) for e in events} == {("optim.lr", "optim.weight_decay", "seed")}
    # A member folder is an ordinary run: it evaluates like one.
    metrics = trained.evaluate(run_dir / "members" / "001")
    assert metrics["step"] == 4
    assert metrics["loss"] == pytest.approx(next(e for e in val if e["member"] == 1)["metrics"]["loss"], rel=1e-5)
    # ... and resumes like one.
    member = load(run_dir / "members" / "001" / "config.toml", {"train.steps": 5})
    assert run.train(member, resume=True, echo=lambda *a: None) == run_dir / "members" / "001"
    assert (run_dir / "members" / "001" / "checkpoints" / "step_00000005.pt").exists()


def test_a_members_train_log_holds_the_figures_its_run_alone_logs(tmp_path):
    """Window means and the learning rate, as a run logs them: the sweep logged the last step's values, no lr."""
    sweep = _exp(tmp_path, '[sweep]\n"optim.lr" = [3e-3, 1e-2]\n', **{"train.steps": 6, "train.log_every": 3})
    run_dir = run.train(sweep, echo=lambda *a: None)
    alone = attrs.evolve(member_experiment(sweep, members(sweep)[1]), name="alone")
    alone_dir = run.train(alone, echo=lambda *a: None)

    def train_events(folder: Path) -> list[dict]:
        events = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [e for e in events if e["split"] == "train"]

    ours, theirs = train_events(run_dir / "members" / "001"), train_events(alone_dir)
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == [3, 6]
    for a, b in zip(ours, theirs):
        assert set(a["metrics"]) == set(b["metrics"]) and "lr" in a["metrics"]
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-4)
    assert train_events(run_dir / "members" / "000")[0]["metrics"]["lr"] < ours[0]["metrics"]["lr"]


def test_cli_sweep_reports_the_best_member(tmp_path, capsys):
    path = tmp_path / "exp.toml"
    path.write_text(TINY.format(out=tmp_path / "runs"))
    main([str(path), "--sweep.optim.lr=[1e-3,1e-2]", "--train.steps=2"])
    out = capsys.readouterr().out.splitlines()
    run_dir = tmp_path / "runs" / "sweep"
    # where the resolved config is, as a run says it (it printed all of it)
    assert out[0] == f"run folder {run_dir} (the resolved config: {run_dir / 'config.toml'}; --print_config prints it)"
    # a CNN on the CPU: the members run one after another (vmap would make its convolutions grouped, and slow)
    assert out[1] == "sweep: 2 members, one ensemble step, each member in turn (convolutions on the CPU)"
    # the best member is the one with the lowest final val loss in the run's metrics.jsonl
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = {e["member"]: e for e in events if e["split"] == "val"}  # in step order: the last one wins
    assert sorted(last) == [0, 1] and all(e["step"] == 2 for e in last.values())
    best = min(last, key=lambda m: last[m]["metrics"]["loss"])
    said = next(line for line in out if line.startswith("best member "))
    assert said.startswith(f"best member {best} (optim.lr={last[best]['hparams']['optim.lr']}, seed=0): ")
    assert f"val loss {last[best]['metrics']['loss']:.4f}" in said
    assert f"its run folder: {run_dir / 'members' / f'{best:03d}'}" in out
    with pytest.raises(SystemExit):  # the sweep's own folder holds every member's params stacked
        main(["evaluate", str(run_dir)])
    assert f"is a sweep: give one member's run folder, e.g. {run_dir / 'members' / '000'}" in capsys.readouterr().err
    main(["evaluate", str(run_dir / "members" / "001")])
    assert capsys.readouterr().out.startswith("step 2  loss ")
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--sweep.model.num_classes=[3,4]", "--overwrite"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: sweep.model.num_classes: cannot differ between members: it changes shapes, so they could not "
        "share one vmapped step; sweep only optim.lr, optim.weight_decay or seeds = N"
    ]


class _SignalAt:
    """A train iterator that raises SIGTERM while its ``at``-th batch is read."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __next__(self):
        self.calls += 1
        batch = next(self.inner)
        if self.calls == self.at:
            signal.raise_signal(signal.SIGTERM)
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_sweep_stopped_by_sigterm_resumes_bitwise_to_the_unbroken_sweep(tmp_path, monkeypatch):
    from craft import checkpoint, sweep

    spec = '[sweep]\n"optim.lr" = [3e-3, 1e-2]\n'
    make = lambda name: _exp(tmp_path, spec, name=name, **{"train.steps": 6, "train.eval_every": 4})  # noqa: E731
    straight = run.train(make("straight"), echo=lambda *a: None)
    real = sweep.build_data
    monkeypatch.setattr(sweep, "build_data", lambda exp, split: _SignalAt(real(exp, split), 3) if split == "train" else real(exp, split))
    with pytest.raises(run.Interrupted, match="interrupted at step 3; checkpoint saved to .*step_00000003.pt"):
        run.train(make("broken"), echo=lambda *a: None)
    monkeypatch.undo()
    # Stopped, every member is already a run folder (its config, what decodes its outputs, its curves so far),
    # and asking one for its model says how to get it, not "not a run folder".
    broken = tmp_path / "runs" / "broken"
    assert (broken / "loss.png").is_file()
    for m in ("000", "001"):
        folder = broken / "members" / m
        assert load(folder / "config.toml").sweep is None and (folder / "loss.png").is_file()
        assert json.loads((folder / "classes.json").read_text()) == ["circle", "square", "triangle"]
    with pytest.raises(run.RunError, match=f"a member of the sweep {broken}, which has not finished .*craft train {broken} --resume"):
        trained.evaluate(broken / "members" / "000")
    resumed = run.train(make("broken"), resume=True, echo=lambda *a: None)
    for folder in ("", "members/000", "members/001"):
        a, b = (checkpoint.load(checkpoint.step_files(d / folder / "checkpoints")[-1]) for d in (straight, resumed))
        torch.testing.assert_close(a["state"], b["state"], atol=0, rtol=0)
        assert a["data"] == b["data"] and "numpy_rng" in b
    strip = lambda d: [(e["step"], e["split"], e.get("member"), e["metrics"]) for e in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert strip(straight) == strip(resumed)


def test_a_sweep_does_not_resume_over_a_member_trained_on_alone(tmp_path):
    """Resuming the sweep rewrote such a member's log from the sweep's step, beside its later checkpoint."""
    exp = _exp(tmp_path, '[sweep]\n"optim.lr" = [3e-3, 1e-2]\n', **{"train.steps": 2, "train.eval_every": 2})
    run_dir = run.train(exp, echo=lambda *a: None)
    member = run_dir / "members" / "000"
    run.train(attrs.evolve(load(member / "config.toml"), train=attrs.evolve(exp.train, steps=4)), resume=True, echo=lambda *a: None)
    log = (member / "metrics.jsonl").read_text()
    longer = attrs.evolve(exp, train=attrs.evolve(exp.train, steps=6))
    with pytest.raises(run.RunError, match="member 000 was trained on alone to step 4, past the sweep's step 2"):
        run.train(longer, resume=True, echo=lambda *a: None)
    assert (member / "metrics.jsonl").read_text() == log


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_a_diverging_member_leaves_no_nan_checkpoint_and_the_others_go_on(tmp_path, capsys, on_nonfinite):
    path = tmp_path / "exp.toml"
    path.write_text(TINY.format(out=tmp_path / "runs"))
    main([str(path), "--sweep.optim.lr=[1e-3, 1e30]", "--train.steps=4", f"--train.on_nonfinite={on_nonfinite}"])
    out = capsys.readouterr().out
    assert "member 1 (optim.lr=1e+30, seed=0): non-finite loss or gradient norm from step" in out
    assert "best member 0" in out
    run_dir = tmp_path / "runs" / "sweep"
    files = list(run_dir.rglob("step_*.pt"))
    assert len(files) == 3  # the sweep's and each member's
    for file in files:
        for leaf in torch.load(file, weights_only=True)["state"]["params"].values():
            assert torch.isfinite(leaf).all(), file
    # the lr logged at the end is the one the member's last applied update used (skipped ones leave the count behind)
    from craft.optim import ScheduleState, find_state, warmup_cosine

    for member, lr in ((0, 1e-3), (1, 1e30)):
        folder = run_dir / "members" / f"{member:03d}"
        applied = int(find_state(trained.load_run(folder).state.opt_state, ScheduleState).count)
        logged = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        last = [e for e in logged if e["split"] == "train"][-1]["metrics"]["lr"]
        assert last == pytest.approx(float(warmup_cosine(lr, total_steps=4, warmup_ratio=0.25)(torch.tensor(max(applied - 1, 0)))))
        assert applied == 4 if member == 0 else applied < 4


def test_a_member_plot_that_fails_is_a_warning_and_every_member_is_saved(tmp_path, capsys, monkeypatch):
    from craft import logging

    def broken(run_dir):
        raise ValueError("metrics.jsonl line 3 is not JSON")

    monkeypatch.setattr(logging, "plot_metrics", broken)
    path = tmp_path / "exp.toml"
    path.write_text(TINY.format(out=tmp_path / "runs"))
    main([str(path), "--sweep.optim.lr=[1e-3,1e-2]", "--train.steps=2"])
    out = capsys.readouterr().out
    members_dir = tmp_path / "runs" / "sweep" / "members"
    for m in ("000", "001"):
        assert f"warning: could not draw {members_dir / m / 'loss.png'}: metrics.jsonl line 3 is not JSON" in out
        assert list((members_dir / m / "checkpoints").glob("*.pt"))
    assert "best member " in out


@pytest.mark.parametrize(("key", "value", "fix"), [("train.loggers", ["tensorboard"], "[]"), ("train.tensorboard", True, "false")])
def test_a_sweep_refuses_trackers_it_would_not_feed(tmp_path, key, value, fix):
    """A sweep logs to metrics.jsonl only: asked for TensorBoard, it used to train and leave none, without a word."""
    exp = _exp(tmp_path, '[sweep]\n"optim.lr" = [1e-3, 3e-3]\n', **{key: value})
    with pytest.raises(run.RunError) as info:
        run.train(exp, echo=lambda *a: None)
    assert str(info.value) == (
        f"{key} does not apply to a sweep: it logs to the run's and each member's metrics.jsonl only "
        f"(members/NNN/); set {key} = {fix}, or train one run per value"
    )
    assert not (tmp_path / "runs").exists()


def test_a_sweep_of_seeds_alone_trains_each_seed_as_its_own_run(tmp_path):
    """`seeds = N` with no value lists (it failed with `inject_hyperparams needs at least one hyperparameter`):
    member 0 is the experiment trained alone; member 1 starts from seed 1's weights and reads the same batches."""
    sweep = _exp(tmp_path, "[sweep]\nseeds = 2\n")
    run_dir = run.train(sweep, echo=lambda *a: None)
    team = members(sweep)
    assert [m.seed for m in team] == [0, 1]
    alone_dir = run.train(attrs.evolve(member_experiment(sweep, team[0]), name="alone"), echo=lambda *a: None)
    saved = [torch.load(next((run_dir / "members" / f"00{i}" / "checkpoints").glob("step_*.pt")), weights_only=True)
             for i in (0, 1)]
    theirs = torch.load(next((alone_dir / "checkpoints").glob("step_*.pt")), weights_only=True)
    for k, v in theirs["state"]["params"].items():
        torch.testing.assert_close(saved[0]["state"]["params"][k], v, atol=1e-6, rtol=1e-5)
    assert not torch.equal(saved[0]["state"]["params"]["fc.weight"], saved[1]["state"]["params"]["fc.weight"])
    assert trained.evaluate(run_dir / "members" / "001")["step"] == 4


def test_the_sweep_says_how_its_members_run():
    """The first line names the strategy make_ensemble_step picks: it said "one vmapped step" for every model."""
    from torch import nn

    from craft.models import SmallCNN
    from craft.sweep import how_members_run

    assert how_members_run(SmallCNN(3), "cpu") == "one ensemble step, each member in turn (convolutions on the CPU)"
    assert how_members_run(nn.Linear(2, 2), "cpu") == "one vmapped step"
    assert how_members_run(SmallCNN(3), "cuda") == "one vmapped step"
