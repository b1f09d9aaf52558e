"""benchmarks/optimizer_curves.py: variants parse as written and two short runs give one loss table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_gpt


def test_a_variant_keeps_the_commas_of_a_list_value(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from optimizer_curves import parse_variant

    name, path, overrides = parse_variant("muon=e.toml,--optim.kind=muon,--optim.adamw_match=['wte.*','wpe.*'],--seed=1")
    assert (name, path) == ("muon", "e.toml")
    assert overrides == ["--optim.kind=muon", "--optim.adamw_match=['wte.*','wpe.*']", "--seed=1"]
    with pytest.raises(SystemExit, match="NAME=EXPERIMENT"):
        parse_variant("e.toml")


@pytest.mark.slow
def test_two_optimizers_give_one_table_of_val_loss_against_tokens(tmp_path):
    config = tiny_gpt(tmp_path, "[optim]\nkind = \"adamw\"\nlr = 1e-3\n[train]\nsteps = 4\ncompile = false\n")
    muon = f"muon={config},--optim.kind=muon,--optim.adamw_match=['wte.*','wpe.*','lm_head.*']"
    result = subprocess.run(
        [sys.executable, "benchmarks/optimizer_curves.py", f"adamw={config}", muon, "--steps", "4",
         "--eval_every", "2", "--out", str(tmp_path / "curves")],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert [row[0] for row in rows] == ["2", "4"] and all(len(row) == 4 for row in rows)
    assert all(float(x) > 0 for row in rows for x in row[2:])
