"""Sampling text from a language model, one token at a time.

The model is any ``nn.Module`` mapping token ids ``(B, T)`` to logits
``(B, T, V)``, called only through ``torch.func.functional_call`` with a
params dict (``{**state.params, **state.buffers}`` of a ``TrainState``), so
the module's own tensors are never read. A model with ``init_cache`` (GPT's
KV cache, the LSTM's state) is prefilled once and then fed one token per
call; without it, every token reruns the whole context.

``context`` holds keyword inputs the model needs besides the token ids, such
as the image a captioner describes (``context={"image": image[None]}``).
They go with every call that starts from the beginning of the context: each
uncached call, and each prefill (or re-prefill, after the context slides) of
a cached one; never with the one-token cached calls, whose model already
holds them in its cache.

Sampling is reproducible: a dedicated ``torch.Generator`` seeded with
``seed`` draws every sample; the global RNG is never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """``logits (B, V)`` with ``-inf`` outside the allowed tokens; top-k first, then top-p.

    - ``top_k`` keeps the ``k`` largest logits (exactly ``k``: ties are broken
      by ``topk``'s order).
    - ``top_p`` keeps the smallest set of most probable tokens whose total
      probability reaches ``p`` (nucleus sampling); the most probable token is
      always kept.
    """
    _check_filters(top_k, top_p)
    if top_k is not None and top_k < logits.shape[-1]:
        keep = logits.topk(top_k, dim=-1).indices  # (B, k)
        drop = torch.ones_like(logits, dtype=torch.bool).scatter(-1, keep, False)  # (B, V)
        logits = logits.masked_fill(drop, float("-inf"))
    if top_p is not None:
        probs, order = logits.float().softmax(-1).sort(dim=-1, descending=True)  # (B, V) each
        before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        # A token is needed while the more likely ones have not reached p yet;
        # the first is always needed (before = 0 < p).
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator,
) -> Tensor:
    """Token ids ``(B,)`` int64 drawn from ``logits (B, V)``.

    ``temperature == 0`` is greedy (argmax). Otherwise the logits are divided
    by ``temperature``, filtered by ``filter_logits`` (so top-p sees the
    tempered distribution), and sampled with ``generator``. The largest logit
    is subtracted first (softmax does not change), so a tiny temperature
    (1e-45) cannot overflow: it samples among the tied largest logits, which
    is greedy decoding in the limit.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    shifted = (logits - logits.amax(-1, keepdim=True)) / temperature  # (B, V), <= 0: no inf - inf
    probs = filter_logits(shifted, top_k=top_k, top_p=top_p).softmax(-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def context_start(length: int, start: int, block_size: int | None) -> int:
    """Where the model's context begins in a sequence of ``length`` tokens.

    The context is ``tokens[start:]``. When it would hold more than
    ``block_size`` tokens, it slides: ``start`` jumps so that only the last
    ``keep = max(1, block_size // 2)`` tokens remain, and a cached model is
    prefilled again from them. Sliding by half a block at once (rather than
    one token per step) lets the cache serve ``block_size // 2`` tokens
    between rebuilds. Cached and uncached generation both use this rule, so
    they see exactly the same context at every step. ``block_size=None``
    (an LSTM) never slides.
    """
    if block_size is None or length - start <= block_size:
        return start
    return length - max(1, block_size // 2)


def generate(
    model: nn.Module,
    params: Mapping[str, Tensor],
    prompt: Sequence[int] | Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    stop: Callable[[list[int]], bool] | None = None,
    context: Mapping[str, Tensor] | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after ``prompt`` (a batch of one).

    ``params`` holds all of the model's parameters and buffers (``model.state_dict()``, or an export's
    ``model.safetensors``, will do: tied weights may come under both names). ``stop`` gets
    the new tokens so far (prompt excluded) after each one; when it returns
    True, generation ends (the token that triggered it has been yielded).
    ``use_cache=False``, or a model without ``init_cache``, reruns the whole
    context for every token; both give the same tokens (see ``context_start``).
    ``context``: keyword tensors for the model (batch of one), moved to the
    params' device, passed with each uncached call and each prefill.
    Arguments are checked here, before the first token is asked for.
    """
    _check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    tokens = [int(t) for t in (prompt.flatten().tolist() if isinstance(prompt, Tensor) else prompt)]
    if not tokens:
        raise ValueError("the prompt has no tokens; give at least one")
    cached = use_cache and hasattr(model, "init_cache")
    return _generate(
        model, once_per_tensor(model, params), tokens, max_new_tokens, temperature, top_k, top_p, seed, cached, stop, dict(context or {})
    )


def once_per_tensor(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``params`` less the second names of the model's tied tensors (the GPT's ``lm_head.weight``, which is
    ``wte.weight``) where the first is given: ``model.state_dict()`` and an export hold both names, and
    ``functional_call`` refuses two values for one tensor."""
    first: dict[int, str] = {}
    primary = {}  # a tied tensor's second name -> its first
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if (seen := first.setdefault(id(tensor), name)) != name:
            primary[name] = seen
    return {name: t for name, t in params.items() if primary.get(name) not in params}


def _generate(
    model, params, tokens, max_new_tokens, temperature, top_k, top_p, seed, cached, stop, context
) -> Iterator[int]:
    ref = next(t for t in params.values() if t.is_floating_point())
    context = {name: t.to(ref.device) for name, t in context.items()}
    generator = torch.Generator(device=ref.device).manual_seed(seed)
    block_size = getattr(model, "block_size", None)
    new: list[int] = []
    start, cache = context_start(len(tokens), 0, block_size), None

    def forward(ids: list[int], **kwargs) -> Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=ref.device)  # (1, T)
        with torch.no_grad(), _eval_mode(model):
            return functional_call(model, params, (idx,), kwargs)[:, -1]  # (1, V)

    for _ in range(max_new_tokens):
        if not cached:
            logits = forward(tokens[start:], **context)
        elif cache is None:  # first step, or the context just slid: prefill
            cache = model.init_cache(1, device=ref.device, dtype=ref.dtype)
            logits = forward(tokens[start:], **context, cache=cache, pos=0)
        else:  # the cache holds tokens[start:-1]; feed the last one
            logits = forward(tokens[-1:], cache=cache, pos=len(tokens) - 1 - start)
        token = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))
        tokens.append(token)
        new.append(token)
        yield token
        if stop is not None and stop(new):
            return
        slid = context_start(len(tokens), start, block_size)
        if slid != start:
            start, cache = slid, None


def generate_text(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    stop: str | None = None,
    context: Mapping[str, Tensor] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The text generated after ``prompt`` (prompt excluded), decoded with ``tokenizer``.

    With ``stop``, generation ends as soon as the new text contains it, and
    the text is cut just before it. ``context`` is passed on as in ``generate``.
    ``on_text`` is called with each new piece of the text as it is generated
    (the pieces join to the returned text); a piece that could still turn
    out to begin ``stop`` is held back until it cannot.
    """
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character, e.g. --prompt='\\n'")
    if stop == "":
        raise ValueError("the stop string is empty; give at least one character or leave it out")
    found = None if stop is None else (lambda new: stop in tokenizer.decode(new))
    new, shown = [], 0
    tokens = generate(
        model, params, tokenizer.encode(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, use_cache=use_cache, stop=found, context=context,
    )
    for token in tokens:
        new.append(token)
        if on_text is not None:
            shown = _show_new(tokenizer.decode(new), shown, stop, on_text)
    text = tokenizer.decode(new)
    text = text if stop is None else text.partition(stop)[0]
    if on_text is not None and len(text) > shown:
        on_text(text[shown:])
    return text


def _show_new(text: str, shown: int, stop: str | None, on_text: Callable[[str], None]) -> int:
    """Pass ``text[shown:]`` to ``on_text``, less what may be the start of ``stop``; return the new ``shown``.

    A trailing replacement character (half of a multi-byte character) waits for its other half.
    """
    end = len(text.rstrip("\ufffd"))
    if stop is not None:  # a stop string may be forming at the end, or just found
        at = text.find(stop)
        end = min(end, len(text) - len(stop) + 1 if at < 0 else at)
    if end > shown:
        on_text(text[shown:end])
        return end
    return shown


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for one call; every submodule's mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(False)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_filters(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    _check_filters(top_k, top_p)
