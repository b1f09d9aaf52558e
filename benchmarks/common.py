"""Timing, memory and reference-loop helpers shared by the benchmarks.

Every benchmark measures craft against the strongest imperative loop a
PyTorch user would write today (``imperative_step``), with contenders
alternating in one process over repeated rounds (``interleaved_rounds``), and
prints the spread over rounds next to the median (``spread``, ``ratio``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.profiler import ProfilerActivity, profile

from craft.compiling import backport_inductor_fixes

# The references' torch.compile gets the inductor fix craft's compile applies (torch < 2.12 crashes
# on a compiled foreach optimizer step on CUDA without it), so every contender compiles the same way.
backport_inductor_fixes()

EAGER, COMPILED_MODEL, COMPILED_STEP = "eager", "compile(model)", "compile(step)"
MODES = (EAGER, COMPILED_MODEL, COMPILED_STEP)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, rounds: int, steps: int
) -> dict[str, list[float]]:
    """Per round, the median seconds per call of each function; rounds alternate the contenders.

    Shared machines drift (other tenants, frequency scaling); alternating
    ``rounds`` of ``steps`` calls, with the order reversed every other round,
    spreads the drift over every contender instead of charging it to whichever
    ran last. Returns ``name -> [seconds per call in round r]``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            out[name].append(statistics.median(timed(fns[name], device) for _ in range(steps)))
    return out


def spread(values: Iterable[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    """``median (min-max)`` of ``values * scale``, e.g. ``17.80 (17.2-18.9)``."""
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):{fmt}} ({v[0]:{fmt}}-{v[-1]:{fmt}})"


def ratio(reference: list[float], ours: list[float]) -> str:
    """Speed-up ``reference / ours`` per round (seconds, same rounds): ``median (min-max)`` with an ``x``."""
    per_round = sorted(r / o for r, o in zip(reference, ours))
    return f"{statistics.median(per_round):.2f}x ({per_round[0]:.2f}-{per_round[-1]:.2f})"


def adamw_for(params: list | Iterable, mode: str, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """The fastest stock AdamW for ``mode``.

    Eager and ``compile(model)``: ``fused=True`` (one kernel for every tensor;
    CPU and CUDA since torch 2.4), else ``foreach=True``. ``compile(step)``:
    the compiled-optimizer recipe (pytorch.org/tutorials/recipes/compiling_optimizer.html,
    ..._lr_scheduler.html): ``foreach=True``, which inductor fuses, and the
    learning rate a tensor (``capturable=True``) so a schedule does not recompile.
    """
    if mode == COMPILED_STEP:
        lr = torch.tensor(float(kwargs.pop("lr")), device=device)
        return torch.optim.AdamW(params, lr=lr, foreach=True, capturable=True, **kwargs)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # fused unsupported on this device or dtype
        return torch.optim.AdamW(params, foreach=True, **kwargs)


def imperative_step(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, dict], torch.Tensor],
    *,
    mode: str,
    clip: float,
    inputs: Callable[[dict], tuple] = lambda batch: (batch["input"],),
    param_groups: list[dict] | None = None,
    schedule: Callable[[int], float] | None = None,
    bf16: bool = False,
    backend: str = "inductor",
    **adamw_kwargs,
):
    """The imperative reference loop; returns ``(step(batch), bytes held between steps)``.

    ``zero_grad(set_to_none)``, forward (under bf16 autocast when ``bf16``), loss,
    ``backward``, ``clip_grad_norm_(foreach=True)``, ``opt.step()``. ``mode``:
    ``eager``; ``compile(model)``; ``compile(step)``: the whole step above
    in one ``torch.compile``'d function (graph breaks at ``backward`` included,
    as the compiled-optimizer recipe compiles ``opt.step``), with ``torch.compile``'s
    ``backend``. ``schedule(step)`` gives the learning rate, set through
    ``param_groups`` before each step.
    """
    device = next(model.parameters()).device
    forward = torch.compile(model, backend=backend) if mode == COMPILED_MODEL else model
    opt = adamw_for(param_groups or list(model.parameters()), mode, device, **adamw_kwargs)
    count = [0]

    def one_step(batch: dict) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(forward(*inputs(batch)), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        opt.step()
        return loss.detach()

    compiled = torch.compile(one_step, backend=backend) if mode == COMPILED_STEP else one_step

    def step(batch: dict) -> torch.Tensor:
        if schedule is not None:
            lr = schedule(count[0])
            for group in opt.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)  # in place: the compiled step reads the same tensor
                else:
                    group["lr"] = lr
        count[0] += 1
        return compiled(batch)

    def held() -> int:  # params, grads and optimizer state
        states = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        params = list(model.parameters())
        return tensor_bytes(params) + tensor_bytes(p.grad for p in params) + tensor_bytes(states)

    return step, held


def peak_bytes_during(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated by ``fn`` above what was live when it started.

    On CUDA: the caching allocator's peak counter. On the CPU: the running sum
    of the profiler's allocation and free events, in time order.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
