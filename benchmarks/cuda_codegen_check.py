"""Does inductor compile a donated step into CUDA kernels that race? Answered on a machine without a GPU.

Inductor writes its CUDA (Triton) code without running it: here every device
query it makes is answered with an H200's properties, and the wrapper module
is taken as text just before it would be loaded. Nothing is compiled by
Triton and nothing runs. Each kernel launch is then read for a buffer passed
as both an input and an output that one thread block may read after another
wrote it: stored in one sub-kernel of a multi-tensor ("combo") kernel and
loaded in another (their blocks run at the same time), or loaded and stored
at different elements in one kernel (pytorch/pytorch#198280's transposed
copy). A CPU compile runs a combo kernel's sub-kernels one after another,
which is why the CPU never showed the bug.

    python benchmarks/cuda_codegen_check.py ["craft step" ...] [--no-backport]

Prints, per step: kernel launches and the races found (the first in full), or
where inductor failed. ``--no-backport`` leaves out the fix craft gives torch
< 2.12's inductor (``craft.compiling.backport_inductor_fixes``): under torch
2.11 the gpt_char and GPT-2-width steps then crash as they did on the H200.
Relies on inductor internals (checked with torch 2.14): a torch that moved
them raises ``FakeCudaUnavailable``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_donation_repro import TinyGPT, foreach_after_reductions, make_step, reductions_args  # noqa: E402

from craft.compiling import backport_inductor_fixes  # noqa: E402
from craft.optim import adamw, muon  # noqa: E402
from craft.step import default_inputs, make_pure_step  # noqa: E402
from craft.tasks import classification_loss, image_inputs, language_model_loss  # noqa: E402


class FakeCudaUnavailable(RuntimeError):
    """This torch's inductor cannot be made to write CUDA code without a GPU (see the module doc)."""


class _Written(Exception):
    pass


def fake_cuda() -> None:
    """Answer inductor's device queries as an H200 would, and stop it before it loads its module."""
    try:
        import torch._inductor.codegen.triton  # noqa: F401 - imported before patching what it reads
        import torch._inductor.scheduler as scheduler
        import torch.utils._triton as triton_utils
        from torch._inductor import codecache
        from torch._inductor.runtime import hints
    except ImportError as e:
        raise FakeCudaUnavailable(str(e)) from e
    props = collections.namedtuple("Props", "name major minor multi_processor_count total_memory warp_size "
                                   "max_threads_per_multi_processor regs_per_multiprocessor max_threads_per_block "
                                   "shared_memory_per_block_optin L2_cache_size gcnArchName uuid")(
        "NVIDIA H200", 9, 0, 132, 140 << 30, 32, 2048, 65536, 1024, 232448, 50 << 20, "", "fake")
    device = hints.DeviceProperties(type="cuda", index=0, multi_processor_count=132, cc=90, major=9,
                                    regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                                    max_threads_per_block=1024, warp_size=32)
    torch.cuda.get_device_properties = lambda *a, **k: props
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    scheduler.has_triton = triton_utils.has_triton = lambda: True
    triton_utils.triton_hash_with_backend = lambda: "fake"
    hints.DeviceProperties.create = classmethod(lambda cls, d: device)

    def written(cls, *args, **kwargs):
        path = args[1] if len(args) > 1 else kwargs.get("path")
        raise _Written(Path(path).read_text())

    codecache.PyCodeCache.load_by_key_path = classmethod(written)


def _to_cuda(gm: torch.fx.GraphModule) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    swap = lambda a: cuda if a == cpu else a  # noqa: E731
    for node in gm.graph.nodes:
        node.args, node.kwargs = torch.fx.node.map_aggregate(node.args, swap), torch.fx.node.map_aggregate(node.kwargs, swap)
    gm.recompile()


def cuda_code(fn: Callable, make_args: Callable[[str], tuple], **options) -> str:
    """The module inductor writes for ``fn(*make_args("cuda"))``, with inductor config ``options``.

    Traced on the CPU (autograd's engine wants a real CUDA context), with
    inductor's decompositions, then moved to CUDA and compiled on fake tensors.
    """
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table
    from torch._subclasses.fake_tensor import FakeTensorMode

    gm = make_fx(lambda *a: tuple(pytree.tree_leaves(fn(*a))), tracing_mode="fake",
                 decomposition_table=select_decomp_table())(*make_args("cpu"))
    _to_cuda(gm)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        args = pytree.tree_leaves(make_args("cuda"))
    # constant folding, and timing a padded matmul against an unpadded one, would run on the (absent) device
    with torch._inductor.config.patch({"joint_graph_constant_folding": False, "shape_padding": False, **options}), fake:
        try:
            compile_fx(gm, args)
        except Exception as e:  # noqa: BLE001 - the module text rides on the exception chain
            while e is not None and not isinstance(e, _Written):
                e = e.__cause__ or e.__context__
            if e is None:
                raise
            return e.args[0]
    raise FakeCudaUnavailable("inductor compiled without writing a module")


KERNEL = re.compile(r"(\w+) = async_compile\.triton\('\w+', '''(.*?)''', device_str", re.S)
LAUNCH = re.compile(r"(\w+)\.run\((.*?), stream=")
ACCESS = re.compile(r"tl\.(load|store)\((\w+) \+ \((.*?)\)(?:, |\))")
INDEX_VAR = re.compile(r"\b(?:x|y|z|r0_)\d+\b")
ASSIGN = re.compile(r"^\s*((?:x|y|z|r0_)\d+) = (.+)$", re.M)
SUB_KERNEL = re.compile(r"^\s*(?:if|elif) pid < num_\w+:\s*$", re.M)
BROADCAST_ZERO = re.compile(r"tl\.full\(\[\w+\], 0, tl\.int32\)\.broadcast_to\(.*")


def _accesses(source: str) -> dict[str, set[tuple[int, str, str]]]:
    """Kernel pointer -> {(sub-kernel, "load"|"store", element index with index variables expanded)}."""
    out = collections.defaultdict(set)
    for part_no, part in enumerate(SUB_KERNEL.split(source[source.index("def "):])):
        names = dict(ASSIGN.findall(part))
        for kind, pointer, index in ACCESS.findall(part):
            index = "0" if BROADCAST_ZERO.fullmatch(index) else index
            for _ in range(5):
                index = INDEX_VAR.sub(lambda m: f"({names[m.group(0)]})" if m.group(0) in names else m.group(0), index)
            out[pointer].add((part_no, kind, index))
    return out


def races(code: str) -> list[str]:
    """Each kernel launch in ``code`` that may read a buffer after another thread block wrote it."""
    kernels = {}
    for name, source in KERNEL.findall(code):
        params = re.search(r"def \w+\((.*?)\):", source).group(1)
        kernels[name] = ([p.split(":")[0].strip() for p in params.split(",")], _accesses(source))
    found = []
    for name, arguments in LAUNCH.findall(code):
        if name not in kernels:
            continue
        pointers, accesses = kernels[name]
        by_buffer = collections.defaultdict(set)
        for pointer, buffer in zip(pointers, (a.strip() for a in arguments.split(","))):
            by_buffer[buffer] |= accesses.get(pointer, set())
        for buffer, seen in by_buffer.items():
            loads = {(part, i) for part, kind, i in seen if kind == "load"}
            stores = {(part, i) for part, kind, i in seen if kind == "store"}
            clash = next(((lp, li, sp, si) for lp, li in loads for sp, si in stores if (lp, li) != (sp, si)), None)
            if clash:
                lp, li, sp, si = clash
                found.append(f"{name}: {buffer} loaded by sub-kernel {lp} at [{li}], stored by sub-kernel {sp} at [{si}]")
    return found


# --- the steps checked ------------------------------------------------------------------------

T, V, B = 32, 512, 2


def transposed_copy():
    """pytorch/pytorch#198280: an input overwritten with its own transpose."""
    def f(x):
        x.copy_(x.transpose(-1, -2) * 1.0)
        return x
    return f, lambda device: (torch.empty(80000, 5, 5, device=device),)


def _tokens(device: str, vocab: int = V, block: int = T, batch: int = B) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, block + 1), device=device)


def plain_adamw(donate: bool, copy_back: str = "foreach"):
    """cuda_donation_repro.py's AdamW step in plain torch; donated, copied back with ``copy_back``."""
    model = TinyGPT(V, T, 64, 2, 1)

    def make_args(device):
        params = {k: torch.empty_like(p, device=device) for k, p in model.named_parameters()}
        tokens = _tokens(device)
        zeros = lambda: {k: torch.zeros_like(p) for k, p in params.items()}  # noqa: E731
        return params, zeros(), zeros(), torch.zeros((), device=device), tokens[:, :-1], tokens[:, 1:]

    return make_step(model, donate, copy_back), make_args


def _gpt(block: int = T, vocab: int = V, layers: int = 1, heads: int = 2, width: int = 64, batch: int = B,
         bias: bool = True):
    from craft.models.gpt import GPTConfig

    def make_batch(device):
        tokens = _tokens(device, vocab, block, batch)
        return {"input": tokens[:, :-1], "target": tokens[:, 1:]}

    model = GPTConfig(block_size=block, vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=width,
                      bias=bias).build()
    return model, language_model_loss, default_inputs, make_batch


# experiments/gpt_char.toml's GPT and batch; GPT-2 small's widths with 2 of its 12 layers, one sequence
GPT_CHAR = functools.partial(_gpt, block=64, vocab=65, layers=4, heads=4, width=128, batch=12)
GPT2_WIDE = functools.partial(_gpt, block=1024, vocab=50304, layers=2, heads=12, width=768, batch=1, bias=False)


def _resnet():
    from craft.models.resnet import ResNet

    def batch(device):
        return {"image": torch.randn(8, 3, 32, 32, device=device), "label": torch.randint(0, 10, (8,), device=device)}

    return ResNet(10, widths=(16, 32), blocks=1), classification_loss, image_inputs, batch


def craft_step(copy_back: str | None, parts=_gpt, tx=lambda: adamw(1e-3, weight_decay=0.1, clip_norm=1.0),
               **options):
    """A craft step as ``make_pure_step`` builds it: ``parts()`` gives model, loss, inputs and
    ``batch(device)``; ``options`` are ``make_pure_step``'s keyword arguments.

    ``copy_back``: None (not donated), ``"craft"`` (donated: craft's own copy,
    one ``copy_`` per tensor) or ``"foreach"`` (craft's new state copied into
    the inputs with one ``torch._foreach_copy_``, as craft did before).
    """
    model, loss, inputs, make_batch = parts()
    model.train()
    tx = tx()
    pure = make_pure_step(model, loss, tx, inputs=inputs, donate=copy_back == "craft", **options)

    def step(*state_and_batch):
        new, metrics = pure(*state_and_batch)
        if copy_back == "foreach":
            old = state_and_batch[:4]
            torch._foreach_copy_(pytree.tree_leaves(old), pytree.tree_leaves(new))
            new = old
        return new, metrics

    def make_args(device):
        on = lambda x: x.to(device) if isinstance(x, torch.Tensor) else x  # noqa: E731
        params = {k: torch.empty_like(p, device=device) for k, p in model.named_parameters()}
        buffers = {k: on(b) for k, b in model.named_buffers()}
        opt_state = pytree.tree_map(on, tx.init(params))
        return params, buffers, opt_state, torch.zeros((), dtype=torch.int64, device=device), make_batch(device)

    return step, make_args


NO_LOAF = {"loop_ordering_after_fusion": False}
CHECKS = {
    "#198280 x.copy_(x.mT * 1.0)": (transposed_copy, {}),
    "#198280, loop ordering after fusion off": (transposed_copy, NO_LOAF),
    "#176591 foreach updates after reductions (crashes < 2.12)": (
        lambda: (foreach_after_reductions, functools.partial(reductions_args, fill=torch.empty)), {}),
    "plain AdamW, not donated": (lambda: plain_adamw(False), {}),
    "plain AdamW, donated, _foreach_copy_": (lambda: plain_adamw(True, "foreach"), {}),
    "plain AdamW, donated, _foreach_copy_, loop ordering off": (lambda: plain_adamw(True, "foreach"), NO_LOAF),
    "plain AdamW, donated, copy_ per tensor": (lambda: plain_adamw(True, "per_tensor"), {}),
    "craft step, not donated": (lambda: craft_step(None), {}),
    "craft step, donated, _foreach_copy_": (lambda: craft_step("foreach"), {}),
    "craft step, donated (craft: copy_ per tensor)": (lambda: craft_step("craft"), {}),
    "craft step, donated, skip non-finite": (lambda: craft_step("craft", skip_nonfinite=True), {}),
    "craft step, donated, 2 micro-batches, bf16": (lambda: craft_step("craft", accum_steps=2, precision="bf16"), {}),
    "craft step, donated, Muon": (lambda: craft_step("craft", tx=lambda: muon(0.02, weight_decay=0.1)), {}),
    "craft ResNet step (BatchNorm), donated": (lambda: craft_step("craft", parts=_resnet), {}),
    "gpt_char's step, not donated": (lambda: craft_step(None, parts=GPT_CHAR), {}),
    "gpt_char's step, donated": (lambda: craft_step("craft", parts=GPT_CHAR), {}),
    "gpt_char's step, donated, no clipping": (lambda: craft_step("craft", parts=GPT_CHAR, tx=lambda: adamw(1e-3)), {}),
    "GPT-2 widths, 2 layers, bf16, donated": (lambda: craft_step("craft", parts=GPT2_WIDE, precision="bf16"), {}),
    "GPT-2 widths, 2 layers, bf16, donated, Muon": (
        lambda: craft_step("craft", parts=GPT2_WIDE, precision="bf16", tx=lambda: muon(0.02, weight_decay=0.1)), {}),
}


def check(name: str) -> tuple[int, list[str]]:
    """(kernel launches, races) of one entry of ``CHECKS``."""
    build, options = CHECKS[name]
    torch.manual_seed(0)
    code = cuda_code(*build(), **options)
    return len(LAUNCH.findall(code)), races(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="check only these steps: a whole name, or part of names")
    parser.add_argument("--no-backport", action="store_true",
                        help="leave out the inductor fix craft's compile applies to torch < 2.12")
    args = parser.parse_args()
    # In-process compilation: the code is only written here, and the worker pool's sidecar once hung
    # 300 s at exit waiting for work that a faked device never runs
    torch._inductor.config.compile_threads = 1
    fake_cuda()
    if not args.no_backport:
        backport_inductor_fixes()  # as craft's own compile does
    print(f"torch {torch.__version__}: inductor's CUDA code for an H200, written on the CPU, never run\n")
    print(f"{'step':<57} {'launches':>8} {'races':>6}  first race")
    # A whole name is that step alone ("gpt_char's step, donated" is not also its "..., no clipping").
    for name in (n for n in CHECKS if not args.only or any(o == n or (o not in CHECKS and o in n) for o in args.only)):
        try:
            launches, found = check(name)
        except Exception as e:  # noqa: BLE001 - an inductor crash is a row of the table, not the end of it
            print(f"{name:<57} {'-':>8} {'-':>6}  inductor failed: {_innermost(e)}")
            continue
        print(f"{name:<57} {launches:>8} {len(found):>6}  {found[0] if found else ''}")


def _innermost(e: BaseException) -> str:
    """The innermost cause of ``e`` and where it was raised: ``AssertionError at scheduler.py:123 in f``."""
    while e.__cause__ is not None:
        e = e.__cause__
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}" if frame else ""
    message = str(e).strip().splitlines()[0].rstrip(": ") if str(e).strip() else ""
    return f"{type(e).__name__}{': ' + message if message else ''}{where}"


if __name__ == "__main__":
    main()
