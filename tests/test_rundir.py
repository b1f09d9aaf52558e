"""The run folder (issue 14): what --overwrite may delete, the lock, moved runs, unusable checkpoints, full disks."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest
import torch

from conftest import TINY_TRAIN, run_cli, tiny_cnn
from craft import checkpoint, cli, rundir, run
from craft.config import ConfigError, loads
from craft.logging import read_metrics
from craft.parts import fit_to_data

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")

ADAMW = """
[optim]
kind = "adamw"
lr = 3e-3
"""
CNN = tiny_cnn(ADAMW + TINY_TRAIN)


def toml(tmp_path: Path, shapes: Path) -> Path:
    path = tmp_path / "e.toml"
    path.write_text(CNN.format(out=tmp_path / "runs", data=shapes))
    return path


def craft(*argv: str) -> subprocess.CompletedProcess:
    return run_cli(*argv, env=ENV)


def error_lines(process: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in process.stderr, process.stderr
    return [line for line in process.stderr.splitlines() if line.startswith("error: ")]


def quiet(*args) -> None:
    pass


# -- 2. --overwrite removes only a run folder craft made -------------------


def test_overwrite_never_deletes_the_data_being_read(tmp_path, shapes):
    data = tmp_path / "out" / "data"
    shutil.copytree(shapes, data)
    process = craft(str(toml(tmp_path, shapes)), "--name=data", f"--out_dir={tmp_path / 'out'}", f"--data.path={data}", "--overwrite")
    assert process.returncode == 1
    assert error_lines(process) == [f"error: --overwrite: {str(data)!r} holds the data being read ({str(data)!r}); choose another name"]
    assert sorted(p.name for p in data.iterdir()) == ["train", "val"]


def test_overwrite_refuses_a_folder_craft_did_not_make_and_out_dir_itself(tmp_path, shapes):
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes))
    mine = tmp_path / "runs" / "cnn"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(run.RunError, match=r"was not made by craft \(no .craft-run marker\)"):
        run.train(exp, overwrite=True, echo=quiet)
    assert (mine / "thesis.tex").exists()
    with pytest.raises(rundir.RunError, match="is out_dir itself or holds it"):
        rundir.check_replaceable(tmp_path / "runs", tmp_path / "runs", [])


def test_overwrite_replaces_a_run_craft_made_and_one_from_before_the_marker(tmp_path, shapes):
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {"train.steps": 2})
    run_dir = run.train(exp, echo=quiet)
    assert (run_dir / rundir.MARKER_FILE).exists()
    (run_dir / rundir.MARKER_FILE).unlink()  # as today's main leaves it: config.toml, metrics.jsonl, checkpoints/
    assert run.train(exp, overwrite=True, echo=quiet) == run_dir
    assert [p.name for p in checkpoint.step_files(run_dir / "checkpoints")] == ["step_00000002.pt"]


def test_resume_never_takes_over_a_folder_craft_did_not_make(tmp_path, shapes):
    """It did ("has no checkpoint yet: starting it again"), marking the folder as a run's, and a later
    --overwrite of that name deleted the images it held."""
    mine = tmp_path / "runs" / "cnn"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    process = craft(str(toml(tmp_path, shapes)), "--resume")
    assert process.returncode == 1
    assert error_lines(process) == [f"error: nothing to resume: {str(mine)!r} was not made by craft "
                                    "(no .craft-run marker); choose another name, or out_dir"]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_run_is_never_made_inside_another_and_overwrite_never_deletes_one_inside(tmp_path, shapes):
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {"train.steps": 1})
    outer = run.train(exp, echo=quiet)
    inside = attrs.evolve(exp, out_dir=str(outer / "sub"))
    with pytest.raises(run.RunError, match=r"would be inside the run folder .*; choose an out_dir outside it$"):
        run.train(inside, echo=quiet)
    assert not (outer / "sub").exists()
    nested = outer / "old" / "cnn"  # as an earlier craft let it be made
    shutil.copytree(outer, nested, ignore=shutil.ignore_patterns(".lock"))
    with pytest.raises(run.RunError, match=f"holds another run \\({str(nested)!r}\\); move that run out first"):
        run.train(exp, overwrite=True, echo=quiet)
    assert (nested / "config.toml").exists()
    shutil.rmtree(outer / "old")
    said = []
    assert run.train(exp, overwrite=True, echo=said.append) == outer
    assert f"--overwrite: the run in {outer} is replaced as this one starts" in said


# -- 3. one run per folder ---------------------------------------------------


def test_a_second_run_on_a_held_folder_exits_naming_the_holder(tmp_path, shapes):
    run_dir = tmp_path / "runs" / "cnn"
    held = [
        f"error: run folder {str(run_dir)!r} is in use by another craft run (PID {os.getpid()}); "
        "wait for it to end, or choose another name"
    ]
    with rundir.locked(run_dir):
        process = craft(str(toml(tmp_path, shapes)), "--overwrite")
        assert process.returncode == 1 and error_lines(process) == held
        # Without a flag, a held folder is a taken name (README, fresh_name): the next free one, said in a line. It
        # was refused, so two identical commands started at once got one run and one error.
        said = []
        assert run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes)), echo=said.append) == tmp_path / "runs" / "cnn-2"
        assert said[0] == (f"{str(run_dir)!r} is in use by another craft run (PID {os.getpid()}): this one is "
                           f"{str(tmp_path / 'runs' / 'cnn-2')!r} (--resume continues 'cnn', --overwrite replaces it)")
    assert not run_dir.exists(), "the lock's own folder is removed again"
    with rundir.locked(run_dir):  # released on exit: taken again
        pass


def test_a_name_locked_by_another_run_after_it_was_found_free_takes_the_next_one(tmp_path):
    """Two identical commands started at once both find the folder free; the one that locks it second gets NAME-2
    (it was refused: 'in use by another craft run'). With --resume or --overwrite the lock stays the error."""
    exp = attrs.make_class("Exp", ["out_dir", "name"])(str(tmp_path / "runs"), "race")
    said = []
    with rundir.locked(tmp_path / "runs" / "race"):
        with rundir.claimed(exp, resume=False, overwrite=False, echo=said.append) as (mine, run_dir):
            assert (mine.name, run_dir) == ("race-2", tmp_path / "runs" / "race-2")
            assert (run_dir / ".lock").read_text().strip() == str(os.getpid())
        assert said == [f"{str(tmp_path / 'runs' / 'race')!r} is in use by another craft run (PID {os.getpid()}): this one is "
                        f"{str(tmp_path / 'runs' / 'race-2')!r} (--resume continues 'race', --overwrite replaces it)"]
        for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
            with pytest.raises(rundir.InUse, match="is in use by another craft run"):
                with rundir.claimed(exp, echo=said.append, **flags):
                    pass


# -- 5. errors found late lose nothing ---------------------------------------


def test_an_unknown_early_stopping_metric_is_refused_before_training(tmp_path, shapes, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([str(toml(tmp_path, shapes)), "--train.early_stopping.metric=acuracy"])
    assert exited.value.code == cli.EXIT_CONFIG
    assert capsys.readouterr().err.splitlines() == [
        "error: train.early_stopping.metric: task 'classification' reports no 'acuracy'; "
        "choose one of 'loss', 'accuracy', 'top5'"
    ]
    assert not (tmp_path / "runs" / "cnn").exists()


def test_early_stopping_on_a_metric_of_unknown_direction_asks_for_its_mode(tmp_path, shapes, monkeypatch):
    from craft.tasks import TASKS

    task, real = TASKS["classification"]().build(), run.build_parts  # a task that declares no metric names, as a user's may
    monkeypatch.setattr(run, "build_parts", lambda exp, replicas: real(exp, replicas)._replace(task=task._replace(metric_names=None)))
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {"train.early_stopping": {"metric": "f1"}})
    with pytest.raises(ConfigError, match=r"^train.early_stopping.mode: craft does not know which way 'f1' improves; set mode = "):
        run.train(exp, echo=quiet)
    assert not (tmp_path / "runs" / "cnn").exists()


def test_the_checkpoint_of_an_evaluation_step_is_written_before_evaluating(tmp_path, shapes, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(run, "evaluate_batches", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes)), echo=quiet)
    assert [p.name for p in checkpoint.step_files(tmp_path / "runs" / "cnn" / "checkpoints")] == ["step_00000002.pt"]


def test_a_run_killed_between_a_checkpoint_and_its_evaluation_evaluates_that_step_on_resume(tmp_path, shapes, monkeypatch):
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes))

    def broken(*args, **kwargs):
        raise RuntimeError("killed here")

    with monkeypatch.context() as patched:
        patched.setattr(run, "evaluate_batches", broken)
        with pytest.raises(RuntimeError, match="killed here"):
            run.train(exp, echo=quiet)
    run.train(exp, resume=True, echo=quiet)
    from craft.logging import read_metrics

    val = [e["step"] for e in read_metrics(tmp_path / "runs" / "cnn") if e["split"] == "val"]
    assert val == [2, 4]  # step 2's evaluation, done on resume, then step 4's: each once


# -- 8. a moved run resumes ----------------------------------------------------


def test_a_renamed_run_folder_resumes(tmp_path, shapes):
    path = toml(tmp_path, shapes)
    assert craft(str(path), "--train.steps=2").returncode == 0
    (tmp_path / "runs" / "cnn").rename(tmp_path / "moved")
    process = craft(str(path), f"--out_dir={tmp_path}", "--name=moved", "--resume", "--train.steps=4")
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "moved" / "checkpoints" / "step_00000004.pt").exists()
    assert "warning" not in process.stderr  # the file and the command line say what the run was made with
    # An edited file is not read again by --resume: said, where it was silently ignored (an override is refused)
    path.write_text(path.read_text().replace("lr = 3e-3", "lr = 5e-2"))
    edited = craft(str(path), f"--out_dir={tmp_path}", "--name=moved", "--resume", "--train.steps=6")
    assert edited.returncode == 0, edited.stderr
    assert (f"warning: --resume continues {tmp_path / 'moved' / 'config.toml'}, not {path} again, which now differs: "
            "optim.lr: saved 0.003, file 0.05; change what --resume allows with an override") in edited.stderr


# -- 9. checkpoints that load but hold the wrong things; long and failed writes ---


@pytest.mark.parametrize("damage", [
    lambda p: p.update(torch_rng=torch.zeros(3, dtype=torch.uint8)),
    lambda p: p["state"].update(params=[1, 2]),
])
def test_a_checkpoint_holding_the_wrong_things_is_skipped_on_resume(tmp_path, shapes, damage):
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {"train.checkpoint_every": 1})
    run_dir = run.train(exp, echo=quiet)
    newest = checkpoint.step_files(run_dir / "checkpoints")[-1]
    payload = checkpoint.load(newest)
    damage(payload)
    checkpoint.save(newest, payload)
    lines = []
    run.train(exp, resume=True, echo=lines.append)
    assert any(line.startswith(f"warning: skipping {newest}: unreadable checkpoint") for line in lines), lines
    assert any("from step_00000003.pt" in line for line in lines), lines


def test_a_num_classes_mismatch_with_many_classes_is_a_short_line(tmp_path, shapes):
    exp = loads(tiny_cnn(ADAMW + TINY_TRAIN, model="num_classes = 3\n").format(out=tmp_path / "runs", data=shapes))
    data = SimpleNamespace(num_classes=10_000, classes=[f"class_{i:05d}" for i in range(10_000)])
    with pytest.raises(run.RunError) as error:
        fit_to_data(exp, data)
    message = str(error.value)
    assert len(message) < 300 and "'class_00000'" in message and "10000 in all" in message


@pytest.mark.parametrize("error, said", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device; free some space"),
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES)), "Permission denied; make the folder writable"),  # not "space"
], ids=["full", "denied"])
def test_a_failed_write_names_the_file_and_the_fix_its_cause_points_to(tmp_path, shapes, monkeypatch, error, said):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint.torch, "save", fail)
    with pytest.raises(run.RunError, match=rf"^cannot write checkpoint '.*step_00000002.pt': {said} and --resume$"):
        run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes)), echo=quiet)
    with pytest.raises(rundir.RunError, match=rf"^cannot write '.*config.toml': {said}$"):
        monkeypatch.setattr(Path, "write_text", fail)
        rundir.write_atomic(tmp_path / "config.toml", "x")


def test_the_printed_resume_command_is_shell_quoted(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["craft", "my exp.toml", "--name=a b", "--overwrite"])
    assert cli._report(rundir.Interrupted(3, Path("x"))) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines()[-1] == "resume with: python -m craft train 'my exp.toml' '--name=a b' --resume"
    # A rollback interrupted: resuming it again must not roll back again (the checkpoints since would be set aside).
    for rollback in (["--checkpoint=step_00000002.pt"], ["--checkpoint", "best"]):
        monkeypatch.setattr(sys, "argv", ["craft", "train", "runs/x", "--resume", *rollback, "--train.steps=9"])
        cli._report(rundir.Interrupted(3, Path("x")))
        assert capsys.readouterr().err.splitlines()[-1] == "resume with: python -m craft train runs/x --train.steps=9 --resume"


def test_under_torchrun_rank_0_alone_says_interrupted_and_the_resume_hint_is_a_torchrun_launch(monkeypatch, capsys):
    """Every rank printed "interrupted" (a Ctrl-C at start-up), and the hint was `python -m craft train ...`."""
    monkeypatch.setattr(sys, "argv", ["craft", "exp.toml", "--name=a b"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")

    def ctrl_c(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "parse_command_line", ctrl_c)
    for rank, said in (("1", ""), ("0", "interrupted\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_:
            cli.main(["exp.toml"])
        assert exit_.value.code == cli.EXIT_INTERRUPTED and capsys.readouterr().err == said
        assert cli._report(rundir.Interrupted(3, Path("x"))) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == [  # rank 1 said nothing
        "interrupted at step 3; checkpoint saved to x",
        "resume with: torchrun --nproc_per_node=2 -m craft exp.toml '--name=a b' --resume "
        "(any number of processes may resume it, one included)",
    ]


def test_ranks_reading_different_data_are_one_line():
    def differ(tree, what):
        raise RuntimeError(f"{what} differ between rank 0 and rank(s) [1]")

    replicas = SimpleNamespace(active=True, rank=1, check_same=differ)
    with pytest.raises(run.RunError, match=r"rank 1: the ranks read different data \(data differ between rank 0 and rank"):
        run.check_same_data(SimpleNamespace(fingerprint=lambda: "abc"), replicas)
    run.check_same_data(SimpleNamespace(), replicas)  # a dataset without a fingerprint is not compared


# -- 10. early stopping across a resume ------------------------------------------


def test_a_resume_that_changes_the_early_stopping_metric_counts_the_best_afresh(tmp_path, shapes):
    rule = {"metric": "loss", "mode": "min", "patience": 5}
    run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes), {"train.early_stopping": rule}), echo=quiet)
    lines = []
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {
        "train.steps": 6, "train.early_stopping": {"metric": "accuracy", "mode": "max", "patience": 5},
    })
    run_dir = run.train(exp, resume=True, echo=lines.append)
    assert "train.early_stopping: 'loss' (min) -> 'accuracy' (max): the best so far is counted afresh from this step; " \
        "best.pt is replaced at the next evaluation" in lines
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert int(best["state"]["step"]) == 6  # not the loss-best of before, that no accuracy could beat
    assert best["progress"]["best"] <= 1.0


def test_resuming_a_run_that_stopped_early_trains_no_further_and_says_how(tmp_path, shapes):
    unchanging = {"optim.lr": 0.0, "train.steps": 8, "train.early_stopping": {"metric": "loss", "mode": "min", "patience": 1}}
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), unchanging)
    run_dir = run.train(exp, echo=quiet)
    assert [p.name for p in checkpoint.step_files(run_dir / "checkpoints")][-1] == "step_00000004.pt"
    lines = []
    run.train(exp, resume=True, echo=lines.append)
    assert [p.name for p in checkpoint.step_files(run_dir / "checkpoints")][-1] == "step_00000004.pt"
    assert "the run stopped early at step 4 (no better loss in 1 evaluation); to train it further, raise " \
        "--train.early_stopping.patience" in lines
    run.train(attrs.evolve(exp, train=attrs.evolve(exp.train, early_stopping=attrs.evolve(exp.train.early_stopping, patience=2))),
              resume=True, echo=quiet)
    assert [p.name for p in checkpoint.step_files(run_dir / "checkpoints")][-1] == "step_00000006.pt"


def test_a_resume_may_change_how_much_of_val_is_read_not_what_trains():
    """--data.val_windows=4 on resume was refused ('data.val_windows: saved 2, now 4') though train.eval_batches,
    the same knob for every dataset, is allowed; what the train split is stays checked."""
    saved = {"name": "x", "data": {"kind": "tokens", "path": "d", "block_size": 64, "val_windows": 2, "eval_batch_size": None}}
    now = {**saved, "data": {**saved["data"], "val_windows": 4, "eval_batch_size": 8}}
    assert rundir.check_resumable(now, saved) == []
    changed = {**saved, "data": {**saved["data"], "block_size": 32}}
    with pytest.raises(rundir.RunError, match="data.block_size: saved 64, now 32"):
        rundir.check_resumable(changed, saved)


@pytest.mark.parametrize("section", ["model", "data", "optim", "schedule", "task"])
def test_a_changed_kind_is_named_first_its_options_with_it(section):
    """--model.kind=resnet on resume listed three keys only the new kind has ('model.blocks: saved None, now 1', ...
    5 in all) and not the kind itself: the kind comes first, the keys that differ with it are 'its options'."""
    saved = {"name": "x", section: {"kind": "a", "alpha": 1, "shared": 2}, "train": {"seed": 0}, "aside": {"kind": "k", "z": 1}}
    now = {**saved, section: {"kind": "b", "beta": 0, "gamma": 1, "shared": 3}, "aside": {"kind": "k", "z": 2}}
    with pytest.raises(rundir.RunError) as e:
        rundir.check_resumable(now, saved)
    assert f"differs from the saved run: {section}.kind: saved 'a', now 'b', and its options; aside.z: saved 1, now 2; " \
        "restore" in str(e.value)
    only_kind = {**saved, section: {**saved[section], "kind": "b"}}
    with pytest.raises(rundir.RunError, match=f"run: {section}.kind: saved 'a', now 'b'; restore"):
        rundir.check_resumable(only_kind, saved)


def test_resuming_the_seed_cnn_as_a_resnet_names_the_kind():
    from craft.config import load, to_dict

    cnn = to_dict(load(ROOT / "experiments" / "custom_cnn.toml"))
    resnet = to_dict(load(ROOT / "experiments" / "custom_cnn.toml", texts={"model.kind": "resnet"}))
    with pytest.raises(rundir.RunError, match="saved run: model.kind: saved 'cnn', now 'resnet', and its options; restore"):
        rundir.check_resumable(resnet, cnn)


def test_a_failed_log_write_saves_the_run_draws_the_plot_and_says_the_file_and_fix(tmp_path, shapes, monkeypatch):
    """A full disk under metrics.jsonl ended the run with a bare `[Errno 28] No space left on device` (the close
    flushed the line again), no loss.png, half a line in the log and no checkpoint of the steps since the last."""
    from craft import logging as craft_logging
    from test_logging import failing_after

    monkeypatch.setattr(craft_logging, "append_line", failing_after(2, errno.ENOSPC))  # step 2's train and val
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes))
    with pytest.raises(run.RunError, match=r"^cannot write '.*metrics.jsonl': No space left on device; free some space "
                       r"and --resume; the run is saved in .*step_00000004.pt$"):
        run.train(exp, echo=quiet)
    run_dir = tmp_path / "runs" / "cnn"
    assert (run_dir / "loss.png").stat().st_size > 0
    assert [(e["step"], e["split"]) for e in read_metrics(run_dir)] == [(2, "train"), (2, "val")]
    monkeypatch.undo()
    run.train(exp, resume=True, echo=quiet)  # the resumed run evaluates step 4, whose figures were never written
    assert (4, "val") in [(e["step"], e["split"]) for e in read_metrics(run_dir)]


def test_when_the_save_on_the_way_out_fails_too_the_last_good_checkpoint_is_named(tmp_path, shapes, monkeypatch):
    from craft import logging as craft_logging
    from test_logging import failing_after

    real, saves = checkpoint.torch.save, []

    def full_after_step_2(obj, f, *args, **kwargs):  # the first save is step 2's
        if saves.append(1) or len(saves) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(craft_logging, "append_line", failing_after(2, errno.ENOSPC))
    monkeypatch.setattr(checkpoint.torch, "save", full_after_step_2)
    with pytest.raises(run.RunError, match=r"^cannot write '.*metrics.jsonl': .*; saving the run failed too \(cannot write "
                       r"checkpoint '.*step_00000004.pt': .*\); the last good checkpoint is .*step_00000002.pt$"):
        run.train(loads(CNN.format(out=tmp_path / "runs", data=shapes)), echo=quiet)


def test_an_early_stop_logs_its_last_train_window_and_says_which_way_the_metric_went(tmp_path, shapes, capsys):
    """Stopped at step 4 with log_every = 3, the log was `2 val; 3 train; 4 val`: step 4's train figures were never
    written; the line said "no better accuracy" whichever way accuracy should go."""
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {
        "optim.lr": 0.0, "train.steps": 20, "train.eval_every": 2, "train.log_every": 3,
        "train.early_stopping": {"metric": "accuracy", "patience": 1},
    })
    run.train(exp, echo=quiet)
    events = [(e["step"], e["split"]) for e in read_metrics(tmp_path / "runs" / "cnn")]
    assert events == [(2, "val"), (3, "train"), (4, "val"), (4, "train")]
    said = capsys.readouterr()
    assert "early stopping at step 4: no higher accuracy in 1 evaluation" in said.out + said.err


def test_a_state_whose_parameters_overflowed_is_never_saved(tmp_path, shapes):
    """optim.lr = 1e39 (inf in float32) made step 1's parameters Inf from a finite loss and gradient: saved, and then
    named "the last good checkpoint" when step 2's loss went non-finite."""
    exp = loads(CNN.format(out=tmp_path / "runs", data=shapes), {
        "optim.lr": 1e39, "train.checkpoint_every": 1, "train.log_every": 1,
    })
    with pytest.raises(run.RunError, match=r"^non-finite parameters at step 1, not saved; no checkpoint was written"):
        run.train(exp, echo=quiet)
    assert not list((tmp_path / "runs" / "cnn" / "checkpoints").glob("*.pt"))
