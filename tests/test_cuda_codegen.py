"""Inductor's CUDA code for craft's donated step has no read-after-write race (checked on the CPU).

``benchmarks/cuda_codegen_check.py`` has inductor write the CUDA (Triton) code
of a step for an H200 without a GPU, and reads each kernel for a buffer that
one thread block may load after another stored it. It runs in a subprocess:
it patches torch's device queries for the whole process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT

# The script's other rows (the ResNet step with its donated BatchNorm statistics, gpt_char's 4-layer step,
# GPT-2 widths, Muon, bf16 micro-batches: 70 to 160 kernels, half a minute to a minute each here) are its
# own run: `python benchmarks/cuda_codegen_check.py`.
pytestmark = pytest.mark.slow  # inductor writes the CUDA code of three steps: about a minute cold

NAMES = {
    "known": "#198280 x.copy_(x.mT * 1.0)",
    "foreach copy": "craft step, donated, _foreach_copy_",
    "craft": "craft step, donated (craft: copy_ per tensor)",
}
CRASH = "#176591 foreach updates after reductions (crashes < 2.12)"


@pytest.fixture(scope="module")
def races() -> dict[str, int]:
    """Races found per entry of ``NAMES``; skips where this torch's inductor cannot be driven without a GPU."""
    rows = check(*NAMES.values())
    return {key: int(rows[name][1]) for key, name in NAMES.items()}


def check(*names: str) -> dict[str, list[str]]:
    """The script's rows for ``names``, split after the name: launches, races, the first race (or the failure)."""
    result = subprocess.run(
        [sys.executable, "benchmarks/cuda_codegen_check.py", *names],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    if "FakeCudaUnavailable" in result.stderr:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    return {line[:57].strip(): line[57:].split() for line in result.stdout.splitlines()}


def test_the_check_finds_the_known_inductor_race(races):
    # pytorch/pytorch#198280: an input overwritten with its own transpose in one kernel
    assert races["known"] == 1


def test_crafts_donated_step_on_cuda_has_no_race(races):
    assert races["craft"] == 0  # the GPT step


@pytest.mark.xfail(
    torch.torch_version.TorchVersion(torch.__version__) < (2, 12), strict=True,
    reason="inductor before 2.12 asserts on foreach updates after reductions (pytorch#176591); craft patches it")
def test_this_torch_compiles_foreach_updates_after_reductions_without_crafts_backport():
    launches, races, *failure = check(CRASH, "--no-backport")[CRASH]
    assert launches != "-", " ".join(failure)
    assert races == "0"


@pytest.mark.xfail(strict=True, reason=(
    "a _foreach_copy_ into the inputs is fused into a multi-tensor kernel whose other sub-kernels still read "
    "them; a strict XPASS means torch fixed it (craft.step may then copy with foreach.copy_ again)"))
def test_a_multi_tensor_copy_into_the_inputs_does_not_race(races):
    assert races["foreach copy"] == 0
