"""Property tests of the learning-rate schedules in craft.optim.SCHEDULES."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from craft.optim import SCHEDULES

FAST = settings(max_examples=40, deadline=None)

# craft/optim/schedules.py: "step (0-d int tensor) -> lr (0-d float64 tensor)";
# schedules compute in float64, as torch.optim does with Python floats.
SCHEDULE_DTYPE = torch.float64

LRS = st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False)
FRACTIONS = st.floats(0.0, 1.0, allow_nan=False)


def _at(sched, step: int) -> float:
    """The schedule at one 0-d int64 step; checks the output is a 0-d float tensor."""
    out = sched(torch.tensor(step, dtype=torch.int64))
    assert isinstance(out, torch.Tensor)
    assert out.shape == ()
    assert out.dtype == SCHEDULE_DTYPE
    return out.item()


def _values(sched, n: int) -> list[float]:
    return [_at(sched, s) for s in range(n)]


def _tol(*scales: float) -> float:
    """Slack relative to the magnitudes involved (float32-sized, so it holds either way)."""
    return 1e-5 * max([abs(x) for x in scales] + [1e-6])


# --------------------------------------------------------------------------
# every schedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_gives_0d_float(name):
    sched = SCHEDULES[name](0.1, total_steps=100)  # the common factory signature
    for step in (0, 1, 7, 50, 99, 100, 101, 10_000):
        value = _at(sched, step)
        assert math.isfinite(value)
        assert 0.0 <= value <= 0.1 * (1 + 1e-6)
    # the documented closed form at the factory defaults (no warmup, step_size 1000), computed apart
    for step in (0, 1, 7, 42, 50, 99, 100, 101, 10_000):
        assert _at(sched, step) == pytest.approx(_DEFAULTS_CLOSED_FORM[name](step), rel=1e-12, abs=1e-15), step


def _half_cosine(step: int, total: int = 100) -> float:
    return 0.1 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


# SCHEDULES[name](0.1, total_steps=100) written out by hand: a wrong formula fails above.
_DEFAULTS_CLOSED_FORM = {
    "constant": lambda step: 0.1,
    "linear_warmup": lambda step: 0.1,  # no warmup asked for: lr from step 0
    "cosine": _half_cosine,
    "warmup_cosine": _half_cosine,  # no warmup asked for: the plain cosine
    "step": lambda step: 0.1 * 0.1 ** (min(step, 100) // 1000),  # held past total_steps
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@given(total=st.integers(1, 50), past=st.integers(1, 10_000))
@FAST
def test_every_schedule_keeps_its_last_rate_past_total_steps(name, total, past):
    """A resumed run that trains past ``total_steps`` keeps the rate it had there, as the run says;
    ``step`` decayed on (0.025 said, 0.0125 trained, 10 steps later)."""
    options = {"step_size": 3} if name == "step" else {}
    sched = SCHEDULES[name](0.1, total_steps=total, **options)
    assert _at(sched, total + past) == _at(sched, total)


NEGATIVE = [("constant", "lr", {}), ("linear_warmup", "init_lr", {}), ("cosine", "min_lr", {}),
            ("warmup_cosine", "min_lr", {}), ("warmup_cosine", "init_lr", {"warmup_steps": 2}), ("step", "gamma", {})]


@pytest.mark.parametrize("name, key, options", NEGATIVE)
def test_a_negative_rate_is_refused(name, key, options):
    """``min_lr = -1e-3`` ended a cosine in gradient ascent, without a word."""
    lr, values = (-0.1, {}) if key == "lr" else (0.1, {key: -0.5})
    with pytest.raises(ValueError, match=f"^{name}: {key} must be >= 0, got -0.5"):
        SCHEDULES[name](lr if key != "lr" else -0.5, total_steps=10, **options, **values)


@pytest.mark.parametrize("name", ["cosine", "warmup_cosine"])
def test_a_min_lr_above_lr_is_refused(name):
    with pytest.raises(ValueError, match=f"^{name}: min_lr=0.1 is above lr=0.001; .* set min_lr <= lr$"):
        SCHEDULES[name](1e-3, total_steps=10, min_lr=0.1)
    assert SCHEDULES[name](1e-3, total_steps=10, min_lr=1e-3)(torch.tensor(9)) == pytest.approx(1e-3)  # flat is fine


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_compiles_fullgraph_like_eager(name):
    torch._dynamo.reset()
    sched = SCHEDULES[name](0.3, total_steps=20)
    compiled = torch.compile(sched, backend="aot_eager", fullgraph=True)
    got = compiled(torch.tensor(5))
    want = sched(torch.tensor(5))
    assert got.shape == () and got.dtype == SCHEDULE_DTYPE
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_compiled_schedule_does_not_recompile_as_step_changes():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    sched = SCHEDULES["warmup_cosine"](1.0, total_steps=50, warmup_steps=10, min_lr=0.1)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(sched, backend=counter, fullgraph=True)
    for step in (0, 5, 10, 30, 50, 70):
        torch.testing.assert_close(
            compiled(torch.tensor(step)), sched(torch.tensor(step)), rtol=1e-6, atol=0
        )
    assert counter.frame_count == 1


# --------------------------------------------------------------------------
# constant


@FAST
@given(LRS | st.just(0.0), st.lists(st.integers(0, 10**9), min_size=1, max_size=5))
def test_constant_is_constant(lr, steps):
    sched = SCHEDULES["constant"](lr)
    want = _at(sched, 0)
    assert want == pytest.approx(lr, rel=1e-6, abs=0)
    assert want == torch.tensor(lr, dtype=SCHEDULE_DTYPE).item()
    for s in steps:
        assert _at(sched, s) == want


# --------------------------------------------------------------------------
# warmup_cosine


@st.composite
def warmup_cosine_args(draw):
    lr = draw(LRS)
    min_lr = draw(FRACTIONS) * lr
    init_lr = draw(st.floats(0.0, 10.0))
    total = draw(st.integers(1, 200))
    mode = draw(st.sampled_from(["steps", "ratio", "none"]))
    kwargs: dict = {"total_steps": total, "min_lr": min_lr, "init_lr": init_lr}
    if mode == "steps":
        warm = draw(st.integers(0, total - 1))
        kwargs["warmup_steps"] = warm
    elif mode == "ratio":
        ratio = draw(FRACTIONS)
        warm = round(ratio * total)
        # a warmup as long as the schedule is refused: see
        # test_warmup_cosine_refuses_full_length_warmup
        assume(warm < total)
        kwargs["warmup_ratio"] = ratio
    else:
        warm = 0
    return lr, kwargs, warm


@settings(max_examples=60, deadline=None)
@given(warmup_cosine_args())
def test_warmup_cosine_shape(args):
    lr, kw, warm = args
    total, min_lr, init_lr = kw["total_steps"], kw["min_lr"], kw["init_lr"]
    sched = SCHEDULES["warmup_cosine"](lr, **kw)
    v = _values(sched, total + 3)
    tol = _tol(lr, init_lr, min_lr)

    # starts at init_lr, reaches lr at the end of warmup
    assert v[0] == pytest.approx(init_lr if warm > 0 else lr, abs=tol)
    assert v[warm] == pytest.approx(lr, abs=tol)
    # linear during warmup
    for s in range(warm):
        assert v[s] == pytest.approx(init_lr + (lr - init_lr) * s / warm, abs=tol)
    # ends at min_lr at total_steps and stays there
    for s in (total, total + 1, total + 2):
        assert v[s] == pytest.approx(min_lr, abs=tol)
    for s in (2 * total + 5, 10 * total, 10**7):
        assert _at(sched, s) == pytest.approx(min_lr, abs=tol)

    # continuous: no step moves more than the steepest slope allows
    slope_up = abs(lr - init_lr) / warm if warm else 0.0
    slope_down = math.pi / 2 * abs(lr - min_lr) / (total - warm)
    bound = max(slope_up, slope_down) + tol
    for a, b in zip(v, v[1:]):
        assert abs(b - a) <= bound

    # monotone non-increasing after warmup, and within [min_lr, lr] there
    after = v[warm:]
    for a, b in zip(after, after[1:]):
        assert b <= a + tol
    assert all(min_lr - tol <= x <= lr + tol for x in after)
    # monotone during warmup in the direction of lr - init_lr
    up = v[: warm + 1]
    sign = 1.0 if lr >= init_lr else -1.0
    for a, b in zip(up, up[1:]):
        assert sign * (b - a) >= -tol


def test_warmup_cosine_known_values():
    sched = SCHEDULES["warmup_cosine"](1.0, total_steps=12, warmup_steps=2, min_lr=0.0, init_lr=0.0)
    assert _values(sched, 3) == pytest.approx([0.0, 0.5, 1.0])
    # halfway through the decay: cos(pi/2) -> half of lr
    assert _at(sched, 7) == pytest.approx(0.5, abs=1e-6)
    assert _at(sched, 12) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kw", [{"warmup_steps": 10}, {"warmup_ratio": 1.0}])
def test_warmup_cosine_refuses_full_length_warmup(kw):
    # no room left for the decay: the schedule could not end at min_lr
    with pytest.raises(ValueError, match="must be shorter than total_steps=10; use linear_warmup"):
        SCHEDULES["warmup_cosine"](1.0, total_steps=10, min_lr=0.1, **kw)


# --------------------------------------------------------------------------
# linear_warmup


@st.composite
def linear_warmup_args(draw):
    lr = draw(LRS)
    init_lr = draw(st.floats(0.0, 10.0))
    mode = draw(st.sampled_from(["steps", "ratio", "none"]))
    kwargs: dict = {"init_lr": init_lr}
    if mode == "steps":
        warm = draw(st.integers(0, 150))
        kwargs["warmup_steps"] = warm
        if draw(st.booleans()):
            kwargs["total_steps"] = warm + draw(st.integers(0, 50))
    elif mode == "ratio":
        total = draw(st.integers(1, 150))
        ratio = draw(FRACTIONS)
        warm = round(ratio * total)
        kwargs.update(warmup_ratio=ratio, total_steps=total)
    else:
        warm = 0
    return lr, kwargs, warm


@FAST
@given(linear_warmup_args())
def test_linear_warmup_monotone_then_flat(args):
    lr, kw, warm = args
    init_lr = kw["init_lr"]
    sched = SCHEDULES["linear_warmup"](lr, **kw)
    v = _values(sched, warm + 4)
    tol = _tol(lr, init_lr)

    assert v[0] == pytest.approx(init_lr if warm > 0 else lr, abs=tol)
    sign = 1.0 if lr >= init_lr else -1.0
    for s in range(warm):
        assert sign * (v[s + 1] - v[s]) >= 0.0  # monotone towards lr
        assert abs(v[s + 1] - v[s]) <= abs(lr - init_lr) / warm + tol
        assert v[s] == pytest.approx(init_lr + (lr - init_lr) * s / warm, abs=tol)
    # at lr from the end of warmup on, and exactly flat
    assert v[warm] == pytest.approx(lr, abs=tol)
    for s in list(range(warm, warm + 4)) + [warm + 1000, 10**8]:
        assert _at(sched, s) == v[warm]


# --------------------------------------------------------------------------
# cosine


@FAST
@given(LRS, FRACTIONS, st.integers(1, 200))
def test_cosine_monotone_from_lr_to_min_lr(lr, frac, total):
    min_lr = frac * lr
    sched = SCHEDULES["cosine"](lr, total_steps=total, min_lr=min_lr)
    v = _values(sched, total + 3)
    tol = _tol(lr)

    assert v[0] == pytest.approx(lr, abs=tol)
    assert v[total] == pytest.approx(min_lr, abs=tol)
    for a, b in zip(v, v[1:]):
        assert b <= a + tol
        assert abs(b - a) <= math.pi / 2 * (lr - min_lr) / total + tol
    assert all(min_lr - tol <= x <= lr + tol for x in v)
    for s in (total + 1, total + 2, 5 * total, 10**7):
        assert _at(sched, s) == pytest.approx(min_lr, abs=tol)
    # the cosine itself, at a few points
    for s in {0, total // 3, total // 2, total}:
        want = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * s / total))
        assert v[s] == pytest.approx(want, abs=tol)


# --------------------------------------------------------------------------
# step


@FAST
@given(LRS, st.floats(0.1, 1.0), st.integers(1, 50), st.lists(st.integers(0, 20 * 50), max_size=8))
def test_step_decay_formula(lr, gamma, step_size, steps):
    sched = SCHEDULES["step"](lr, step_size=step_size, gamma=gamma)
    for s in [0, step_size - 1, step_size, 2 * step_size + 1] + steps:
        s = min(s, 21 * step_size - 1)  # at most 20 decays: gamma**k stays well in range
        assert _at(sched, s) == pytest.approx(lr * gamma ** (s // step_size), rel=1e-5, abs=0)


@pytest.mark.parametrize("lr, step_size, gamma", [(0.1, 3, 0.5), (1.0, 1, 0.9), (0.05, 7, 0.1)])
def test_step_decay_matches_torch_step_lr(lr, step_size, gamma):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    torch_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    sched = SCHEDULES["step"](lr, step_size=step_size, gamma=gamma)
    for s in range(4 * step_size + 2):
        assert _at(sched, s) == pytest.approx(torch_sched.get_last_lr()[0], rel=1e-5)
        opt.step()
        torch_sched.step()


def test_step_defaults():
    sched = SCHEDULES["step"](1.0)
    assert _at(sched, 999) == 1.0
    assert _at(sched, 1000) == pytest.approx(0.1)
    assert _at(sched, 2500) == pytest.approx(0.01)


# --------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("name", ["linear_warmup", "warmup_cosine"])
def test_warmup_steps_and_ratio_together_raise(name):
    with pytest.raises(ValueError, match="not both"):
        SCHEDULES[name](0.1, total_steps=100, warmup_steps=10, warmup_ratio=0.1)


@pytest.mark.parametrize("name", ["cosine", "warmup_cosine"])
@pytest.mark.parametrize("total", [None, 0, -5])
def test_missing_total_steps_raises(name, total):
    with pytest.raises(ValueError, match="total_steps"):
        SCHEDULES[name](0.1, total_steps=total)


@pytest.mark.parametrize("name", ["linear_warmup", "warmup_cosine"])
@pytest.mark.parametrize("ratio", [-0.1, -1e-9, 1.0000001, 2.0, math.nan])
def test_warmup_ratio_outside_unit_interval_raises(name, ratio):
    with pytest.raises(ValueError, match="warmup_ratio"):
        SCHEDULES[name](0.1, total_steps=100, warmup_ratio=ratio)


@pytest.mark.parametrize("ratio, warm", [(0.0, 0), (0.5, 50), (0.25, 25), (1.0, 100)])
def test_warmup_ratio_bounds_are_accepted(ratio, warm):
    lw = SCHEDULES["linear_warmup"](0.1, total_steps=100, warmup_ratio=ratio)
    wc = SCHEDULES["warmup_cosine"](0.1, total_steps=100, warmup_ratio=min(ratio, 0.99))
    # warmup_ratio * total_steps warmup steps: lr is first reached at step `warm`
    for sched in (lw, wc) if warm < 100 else (lw,):
        assert _at(sched, warm) == pytest.approx(0.1)
        if warm:
            assert _at(sched, warm - 1) == pytest.approx(0.1 * (warm - 1) / warm)
    assert _at(lw, 100) == pytest.approx(0.1)


def test_linear_warmup_ratio_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        SCHEDULES["linear_warmup"](0.1, warmup_ratio=0.1)


@pytest.mark.parametrize("name", ["linear_warmup", "warmup_cosine"])
@pytest.mark.parametrize("steps", [-1, 101])
def test_warmup_steps_out_of_range_raise(name, steps):
    with pytest.raises(ValueError, match="warmup_steps"):
        SCHEDULES[name](0.1, total_steps=100, warmup_steps=steps)


@pytest.mark.parametrize("step_size", [0, -3])
def test_step_size_must_be_positive(step_size):
    with pytest.raises(ValueError, match="step_size"):
        SCHEDULES["step"](0.1, step_size=step_size)
