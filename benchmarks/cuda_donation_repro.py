"""Does a compiled train step that writes its result into its inputs ("donated") match eager? Plain torch, no craft.

The pattern of craft's donated step, reduced: ``functional_call`` + ``torch.func.grad``
of a small GPT-like model, an AdamW update, then a copy of the new params and
moments into the input tensors, all in one ``torch.compile``. Each variant runs
2 steps from the same weights on the same batch and prints its largest
parameter difference from the same function run eagerly:

- ``donated, _foreach_copy_``: the new params and moments copied into the
  inputs with one ``torch._foreach_copy_`` (params aliasing the module's own
  tensors, as craft's ``init_state`` makes them);
- the same with inductor's loop ordering after fusion off, the first suspect
  (pytorch/pytorch#198280's workaround);
- ``donated, copy_ per tensor``: one ``copy_`` per tensor, as craft copies;
- ``not donated``: returns new tensors.

``benchmarks/cuda_codegen_check.py`` reads the CUDA code inductor writes for
these steps (on a CPU): with ``_foreach_copy_`` it launches a multi-tensor
kernel in which one sub-kernel stores a new moment into its input while
another sub-kernel, run by other thread blocks at the same time, still loads
the old one (loop ordering on or off); copied per tensor, no kernel does.
Expected on a GPU: the two ``_foreach_copy_`` variants MISMATCH, the others
MATCH. ``--minimal`` first runs #198280's three-line case, then
``foreach_after_reductions``, the few lines on which inductor before torch 2.12
crashes (pytorch/pytorch#176591; craft patches it, ``craft.compiling``).

    python benchmarks/cuda_donation_repro.py [--device cuda] [--width 768 --heads 12 --layers 2 --seq 1024]

Prints ``MATCH`` or ``MISMATCH`` per variant (an exception is printed in one line,
e.g. an inductor crash). fp32 with TF32 off, so the tolerance can be tight.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad


class Block(nn.Module):
    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads, self.ln1, self.ln2 = heads, nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c, bias=False), nn.Linear(c, c, bias=False)
        self.fc, self.out = nn.Linear(c, 4 * c, bias=False), nn.Linear(4 * c, c, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(x)).split(c, 2))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, seq: int, c: int, heads: int, layers: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(seq, c)
        self.blocks = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(c)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.wte.weight.T  # tied head


def make_step(model: nn.Module, donate: bool, copy_back: str = "foreach", lr=1e-3, b1=0.9, b2=0.95, eps=1e-8):
    """One AdamW step with ``_foreach`` ops; donated, the new state is copied into the inputs with one
    ``torch._foreach_copy_`` (``copy_back="foreach"``) or one ``copy_`` per tensor (``"per_tensor"``)."""
    def loss(params, idx, target):
        logits = functional_call(model, params, (idx,))
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    def step(params, m, v, count, idx, target):
        g = grad(loss)(params, idx, target)
        names, p, g = list(params), list(params.values()), list(g.values())
        t = count + 1
        m_new = torch._foreach_lerp(list(m.values()), g, 1 - b1)
        v_new = torch._foreach_addcmul(torch._foreach_mul(list(v.values()), b2), g, g, value=1 - b2)
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v_new), torch.sqrt(1 - b2**t)), eps)
        upd = torch._foreach_div(torch._foreach_div(m_new, denom), 1 - b1**t)
        p_new = torch._foreach_add(p, torch._foreach_mul(upd, -lr))
        if donate:  # write the new state into the inputs
            old, new = p + list(m.values()) + list(v.values()), p_new + m_new + v_new
            if copy_back == "foreach":
                torch._foreach_copy_(old, new)
            else:
                for dst, src in zip(old, new):
                    dst.copy_(src)
            return params, m, v, t
        return dict(zip(names, p_new)), dict(zip(names, m_new)), dict(zip(names, v_new)), t

    return step


def run(step, params, idx, target, steps=2):
    m = {k: torch.zeros_like(p) for k, p in params.items()}
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    count = torch.zeros((), device=idx.device)
    for _ in range(steps):
        params, m, v, count = step(params, m, v, count, idx, target)
    return {k: p.detach().clone() for k, p in params.items()}


def minimal(device: torch.device) -> None:
    """pytorch/pytorch#198280: an input overwritten with its own transpose, with and without loop ordering."""

    def f(x):
        x.copy_(x.transpose(-1, -2) * 1.0)
        return x

    for options in ({}, {"loop_ordering_after_fusion": False}):
        torch._dynamo.reset()
        compiled = torch.compile(f, options=options)
        x = torch.rand(80000, 5, 5, device=device)
        wrong = [int((compiled(x.clone()) != f(x.clone())).sum()) for _ in range(3)]
        print(f"x.copy_(x.mT * 1.0), {options or 'defaults'}: elements wrong in 3 calls {wrong}")


def foreach_after_reductions(params: list, moments: list, grads_t: list):
    """pytorch/pytorch#176591's pattern, which a compiled GPT step holds with or without clipping:
    gradients that arrive transposed (as a linear layer's weight gradient does), scaled by a
    reduction, then chained multi-tensor updates. Inductor before torch 2.12 fails a bare ``assert`` in
    ``FusedSchedulerNode.reorder_loops_by_dep_pair`` compiling it for CUDA (the H200's crash)."""
    grads = [g.t() * g.sum() for g in grads_t]
    torch._foreach_mul_(moments, 0.9)
    torch._foreach_add_(moments, grads, alpha=0.1)
    torch._foreach_add_(params, moments, alpha=-0.01)
    return params, moments


def reductions_args(device, fill=torch.randn) -> tuple[list, list, list]:
    """Arguments of ``foreach_after_reductions``: params, moments, transposed gradients, made by ``fill``."""
    shapes = [(64, 96), (128, 32)]
    like = lambda transposed: [fill(s[::-1] if transposed else s, device=device) for s in shapes]  # noqa: E731
    return like(False), like(False), like(True)


def minimal_crash(device: torch.device) -> None:
    """``foreach_after_reductions`` compiled against eager, or the one line inductor failed with."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    args = reductions_args(device)
    copy = lambda: [[t.clone() for t in ts] for ts in args]  # noqa: E731
    try:
        got = torch.compile(foreach_after_reductions)(*copy())
    except Exception as e:  # noqa: BLE001 - the crash is the result
        print(f"pytorch#176591's pattern: inductor fails: {one_line(e)}")
        return
    err = max(float((a - b).abs().max()) for a, b in zip(got[0], foreach_after_reductions(*copy())[0]))
    print(f"pytorch#176591's pattern: compiles; max |compiled - eager| = {err:.3g}")


def one_line(e: Exception) -> str:
    """``e`` as its type and the first line of its message (an inductor crash prints pages)."""
    message = str(e).strip()
    return f"{type(e).__name__}: {message.splitlines()[0][:200] if message else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--minimal", action="store_true", help="first, pytorch/pytorch#198280's and #176591's cases")
    args = ap.parse_args()
    if args.minimal:
        minimal(torch.device(args.device))
        minimal_crash(torch.device(args.device))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    torch.manual_seed(0)
    template = TinyGPT(args.vocab, args.seq, args.width, args.heads, args.layers).to(device)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    idx, target = tokens[:, :-1], tokens[:, 1:]
    own = lambda m: {k: p.detach().clone() for k, p in m.named_parameters()}  # noqa: E731
    expected = run(make_step(template, donate=False), own(template), idx, target)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{args.layers}L {args.heads}H {args.width}E seq {args.seq} batch {args.batch}, 2 AdamW steps vs eager")
    aliased = lambda m: {k: p.detach() for k, p in m.named_parameters()}  # noqa: E731 - as craft's init_state
    no_loaf = {"loop_ordering_after_fusion": False}
    variants = {  # name: donate, copy back, params, inductor options
        "donated, _foreach_copy_": (True, "foreach", aliased, {}),
        "donated, _foreach_copy_, loop ordering off": (True, "foreach", aliased, no_loaf),
        "donated, copy_ per tensor (craft)": (True, "per_tensor", aliased, {}),
        "not donated": (False, "foreach", own, {}),
    }
    for name, (donate, copy_back, params_of, options) in variants.items():
        model = TinyGPT(args.vocab, args.seq, args.width, args.heads, args.layers).to(device)
        model.load_state_dict(template.state_dict())
        torch._dynamo.reset()
        try:
            step = torch.compile(make_step(model, donate, copy_back), options=options)
            got = run(step, params_of(model), idx, target)
        except Exception as e:  # noqa: BLE001 - an inductor crash is a result here
            print(f"{name:42s} ERROR {one_line(e)}")
            continue
        err = max(float((got[k] - expected[k]).abs().max()) for k in expected)
        print(f"{name:42s} {'MATCH' if err <= args.atol else 'MISMATCH'} max |compiled - eager| = {err:.3g}")


if __name__ == "__main__":
    main()
