"""Generation: cached = uncached, the sliding context, sampling filters, stop strings, arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from craft.generate import context_start, filter_logits, generate, generate_text, sample_next
from craft.models import MODELS

V = 13
BLOCK = 8


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def varied(kind: str, seed: int = 0, **options) -> tuple[nn.Module, dict]:
    """A random float64 model with weights large enough that greedy output depends on the context.

    (At the usual 0.02 init, greedy decoding repeats one token forever, which
    would make cached = uncached trivially true.) float64 keeps near-ties of
    the argmax from flipping between the cached and uncached arithmetic.
    """
    torch.manual_seed(seed)
    config = (
        dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, **options)
        if kind == "gpt"
        else dict(vocab_size=V, embedding_dim=8, hidden_dim=16, **options)
    )
    model = MODELS[kind](**config).build().double()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.5)
    return model, {**dict(model.named_parameters()), **dict(model.named_buffers())}


class CharTokenizer:
    """A stand-in for craft.data.text.CharTokenizer: one id per letter of ``alphabet``."""

    def __init__(self, alphabet: str = "abcdefghijklm") -> None:
        self.alphabet = alphabet

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


class Counter(nn.Module):
    """Predicts ``last token + 1 (mod V)`` with confidence ``scale``: a model whose output is known."""

    block_size = None

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.one_hot((idx + 1) % V, V).float()  # (B, T, V)


def counter() -> tuple[nn.Module, dict]:
    model = Counter()
    return model, dict(model.named_parameters())


# -- cached and uncached generation agree, also once the context slides ------


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
@pytest.mark.parametrize("prompt", [[1, 2, 3], list(range(11))])  # the second is longer than BLOCK
def test_greedy_generation_with_the_cache_gives_the_tokens_without_it(kind, prompt):
    model, params = varied(kind)
    cached = list(generate(model, params, prompt, max_new_tokens=6 * BLOCK, temperature=0))
    uncached = list(generate(model, params, prompt, max_new_tokens=6 * BLOCK, temperature=0, use_cache=False))
    assert cached == uncached
    assert len(set(cached)) > 2  # the output depends on the context: the comparison means something


@pytest.mark.parametrize("kind", ["gpt", "char_lstm"])
def test_sampled_generation_is_reproducible_and_cache_independent(kind):
    model, params = varied(kind)
    rng = torch.get_rng_state()
    runs = [
        list(generate(model, params, [4, 5], max_new_tokens=5 * BLOCK, temperature=1.0, top_k=8, seed=7, use_cache=c))
        for c in (True, False, True)
    ]
    assert runs[0] == runs[1] == runs[2]
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    other = list(generate(model, params, [4, 5], max_new_tokens=5 * BLOCK, temperature=1.0, top_k=8, seed=8))
    assert other != runs[0]


def test_generation_uses_the_given_params_not_the_modules_own():
    model, _ = varied("gpt", seed=0)
    trained, params = varied("gpt", seed=1)
    tokens = list(generate(model, params, [1, 2], max_new_tokens=12, temperature=0))
    assert tokens == list(generate(trained, params, [1, 2], max_new_tokens=12, temperature=0))


def test_generation_runs_in_eval_mode_and_restores_the_mode():
    model, params = varied("gpt", dropout=0.5)
    model.train()
    model.blocks[0].eval()  # a user's frozen submodule stays frozen
    first = list(generate(model, params, [1], max_new_tokens=10, temperature=0, use_cache=False))
    again = list(generate(model, params, [1], max_new_tokens=10, temperature=0, use_cache=True))
    assert first == again  # no dropout
    assert model.training and model.blocks[1].training and not model.blocks[0].training


@pytest.mark.parametrize(
    ("length", "start", "block_size", "expected"),
    [
        (8, 0, 8, 0),  # fits
        (9, 0, 8, 5),  # one too many: keep the last 4
        (12, 5, 8, 5),  # 7 tokens from 5: fits
        (14, 5, 8, 10),  # 9 tokens: slide again
        (30, 0, 8, 26),  # a long prompt is cut the same way
        (3, 0, 1, 2),  # keep at least one token
        (10_000, 0, None, 0),  # no block size: never slides
    ],
)
def test_context_slides_to_the_last_half_block(length, start, block_size, expected):
    assert context_start(length, start, block_size) == expected


# -- sampling -------------------------------------------------------------------

finite = st.floats(-30, 30, allow_nan=False, width=32)
values = st.one_of(finite, st.sampled_from([0.0, 1.0, 1.0, float("-inf")]))  # repeats and -inf


@st.composite
def logit_rows(draw) -> torch.Tensor:
    vocab = draw(st.integers(1, 12))
    rows = draw(st.lists(st.lists(values, min_size=vocab, max_size=vocab), min_size=1, max_size=3))
    logits = torch.tensor(rows, dtype=torch.float32)
    logits[:, draw(st.integers(0, vocab - 1))] = draw(finite)  # a row needs a finite logit
    return logits


top_ks = st.one_of(st.none(), st.integers(1, 14))
top_ps = st.one_of(st.none(), st.floats(0.01, 1.0))


def check_top_k(logits: torch.Tensor, kept: torch.Tensor, k: int) -> None:
    for row, keep in zip(logits, kept):
        assert keep.sum() == min(k, row.isfinite().sum())
        if not keep.all():
            assert row[keep].min() >= row[~keep].max()  # the largest ones


def check_top_p(logits: torch.Tensor, kept: torch.Tensor, p: float) -> None:
    probs = logits.double().softmax(-1)
    # craft ranks float32 probabilities, so two that round alike are a tie
    tie = 1 - 4 * torch.finfo(torch.float32).eps
    for row, keep in zip(probs, kept):
        assert row[keep].max() >= row.max() * tie  # the most probable (or one tied with it)
        if not keep.all():
            assert row[keep].min() >= row[~keep].max() * tie  # the most probable ones
        mass = row[keep].sum()
        assert mass >= p - 1e-5  # reaches p
        assert mass - row[keep].min() < p + 1e-5  # and no token could be left out


@given(logit_rows(), top_ks, top_ps)
@example(torch.tensor([[0.0, 2.220446049250313e-16]]), None, 0.5)  # equal in float32 probabilities
def test_filter_keeps_the_right_tokens(logits, top_k, top_p):
    out = filter_logits(logits, top_k=top_k, top_p=top_p)
    kept = out.isfinite()
    assert torch.equal(out[kept], logits[kept])  # kept logits are unchanged
    after_k = logits if top_k is None else filter_logits(logits, top_k=top_k)
    if top_k is not None:
        check_top_k(logits, after_k.isfinite(), top_k)
    if top_p is not None:
        check_top_p(after_k, kept, top_p)  # top-p applies to what top-k left
    if top_k is None and top_p is None:
        assert torch.equal(out, logits)


@pytest.mark.parametrize(("top_p", "size"), [(0.3, 1), (0.5, 1), (0.6, 2), (0.74, 2), (0.8, 3), (0.9, 4), (1.0, 4)])
def test_top_p_keeps_the_smallest_set_that_reaches_p(top_p, size):
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]])  # cumulative, most likely first: 0.5, 0.75, 0.875, 1
    kept = filter_logits(probs.log(), top_p=top_p).isfinite()[0]
    assert kept.sum() == size  # of the two tied at 0.125, one is enough to reach 0.8
    assert kept[1] and (size < 2 or kept[3])


@given(logit_rows(), top_ks, top_ps, st.floats(0.1, 3.0), st.integers(0, 2**32))
def test_samples_never_leave_the_allowed_set_and_repeat_per_seed(logits, top_k, top_p, temperature, seed):
    many = logits.repeat(20, 1)  # 20 draws per row

    def draw() -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample_next(many, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

    samples = draw()
    assert samples.dtype == torch.int64 and samples.shape == (many.shape[0],)
    allowed = filter_logits(many / temperature, top_k=top_k, top_p=top_p).isfinite()
    assert allowed.gather(-1, samples[:, None]).all()
    assert torch.equal(draw(), samples)


@given(logit_rows(), top_ks, top_ps)
def test_temperature_zero_is_argmax(logits, top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    greedy = sample_next(logits, temperature=0, top_k=top_k, top_p=top_p, generator=generator)
    assert torch.equal(greedy, logits.argmax(-1))


# -- text, stop strings, arguments ---------------------------------------------


def test_generate_text_returns_the_new_text_only():
    model, params = counter()
    assert generate_text(model, params, CharTokenizer(), "ab", max_new_tokens=4, temperature=0) == "cdef"


def test_stop_string_ends_generation_and_is_cut_off():
    model, params = counter()
    text = generate_text(model, params, CharTokenizer(), "a", max_new_tokens=12, temperature=0, stop="ef")
    assert text == "bcd"
    # A stop string that never appears leaves the full length.
    text = generate_text(model, params, CharTokenizer(), "a", max_new_tokens=5, temperature=0, stop="zz")
    assert text == "bcdef"


def test_stop_callable_sees_the_new_tokens_and_ends_generation():
    model, params = counter()
    seen = []

    def stop(new: list[int]) -> bool:
        seen.append(list(new))
        return len(new) == 3

    assert list(generate(model, params, [0], max_new_tokens=10, temperature=0, stop=stop)) == [1, 2, 3]
    assert seen == [[1], [1, 2], [1, 2, 3]]


def test_zero_new_tokens_gives_nothing():
    model, params = counter()
    assert list(generate(model, params, [0], max_new_tokens=0)) == []


def test_empty_prompt_is_refused_with_the_fix():
    model, params = counter()
    with pytest.raises(ValueError, match=r"the prompt is empty; give at least one character, e.g. --prompt='\\n'"):
        generate_text(model, params, CharTokenizer(), "", max_new_tokens=3)
    with pytest.raises(ValueError, match="the prompt has no tokens"):
        generate(model, params, [], max_new_tokens=3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(top_k=0), "top_k must be >= 1, got 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0, got -1"),
    ],
)
def test_bad_arguments_fail_at_the_call_with_one_line(options, message):
    model, params = counter()
    with pytest.raises(ValueError, match=message):
        generate(model, params, [1], **{"max_new_tokens": 3, **options})  # not lazily, at the first token


# -- context: keyword inputs besides the token ids -------------------------------


class Shifted(nn.Module):
    """Predicts ``last token + shift (mod V)``: a model whose output depends on a keyword input.

    Its cache keeps ``shift`` from the prefill, as a captioner's keeps the
    image, and it records how it was called.
    """

    block_size = 4

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.calls: list[tuple[int, int, bool]] = []  # (pos, tokens, got shift)

    def init_cache(self, batch_size: int, *, device=None, dtype=None) -> dict:
        return {"shift": torch.zeros(batch_size, 1, dtype=torch.long, device=device)}

    def forward(self, idx, shift=None, cache=None, pos=0):
        self.calls.append((pos, idx.shape[1], shift is not None))
        if cache is not None and shift is not None:
            cache["shift"].copy_(shift)
        shift = cache["shift"] if shift is None else shift  # (B, 1)
        return self.scale * nn.functional.one_hot((idx + shift) % V, V).float()  # (B, T, V)


@pytest.mark.parametrize("use_cache", [True, False])
def test_context_reaches_the_model_and_changes_its_output(use_cache):
    model = Shifted()
    params = dict(model.named_parameters())

    def run(shift: int) -> list[int]:
        context = {"shift": torch.tensor([[shift]])}
        tokens = generate(model, params, [0], max_new_tokens=10, temperature=0, use_cache=use_cache, context=context)
        return list(tokens)

    assert run(2) == [2 * i % V for i in range(1, 11)]
    assert run(3) == [3 * i % V for i in range(1, 11)]


def test_context_goes_with_every_prefill_and_no_one_token_call():
    model = Shifted()
    params = dict(model.named_parameters())
    list(generate(model, params, [0, 1], max_new_tokens=6, temperature=0, context={"shift": torch.tensor([[1]])}))
    prefills = [call for call in model.calls if call[0] == 0]
    assert len(prefills) > 1  # the context slid (block_size 4) and was prefilled again
    assert all(got for pos, _, got in model.calls if pos == 0)
    assert not any(got for pos, tokens, got in model.calls if pos > 0)
    assert all(tokens == 1 for pos, tokens, _ in model.calls if pos > 0)


def test_generate_text_passes_the_context_on():
    model = Shifted()
    text = generate_text(
        model, dict(model.named_parameters()), CharTokenizer(), "a", max_new_tokens=3, temperature=0,
        context={"shift": torch.tensor([[2]])},
    )
    assert text == "ceg"


def test_without_context_models_get_no_extra_arguments():
    model, params = counter()  # its forward takes idx alone
    assert list(generate(model, params, [0], max_new_tokens=3, temperature=0, context=None)) == [1, 2, 3]


# -- streaming and extreme temperatures ------------------------------------------


@pytest.mark.parametrize("stop", [None, "ef", "zz", "d"])
def test_streamed_pieces_join_to_the_text_and_never_show_the_stop_string(stop):
    model, params = counter()
    pieces = []
    text = generate_text(model, params, CharTokenizer(), "a", max_new_tokens=8, temperature=0, stop=stop, on_text=pieces.append)
    assert "".join(pieces) == text and all(pieces)
    if stop is None:
        assert pieces == list("bcdefghi")  # one piece per token, as it comes


@given(st.floats(min_value=1e-45, max_value=1e-30), st.integers(0, 2**32))
def test_a_tiny_temperature_samples_the_largest_logit(temperature, seed):
    logits = torch.tensor([[3.0, 1e4, -2.0, 9999.0], [0.0, -1.0, 5.0, float("-inf")]])
    generator = torch.Generator().manual_seed(seed)
    token = sample_next(logits, temperature=temperature, generator=generator)
    assert token.tolist() == [1, 2]


def test_a_state_dict_with_tied_weights_under_both_names_generates():
    """model.state_dict() (and an export's model.safetensors) holds the tied head as lm_head.weight and
    wte.weight: generate raised torch's 'functional_call got multiple values for keys'."""
    model, params = varied("gpt")
    state = {name: t.clone() for name, t in model.state_dict().items()}  # as loaded from a file: two tensors
    assert {"lm_head.weight", "wte.weight"} <= state.keys()
    expected = list(generate(model, params, [1, 2, 3], max_new_tokens=12, temperature=0))
    assert list(generate(model, state, [1, 2, 3], max_new_tokens=12, temperature=0)) == expected
    assert list(generate(model, model.state_dict(), [1, 2, 3], max_new_tokens=12, temperature=0)) == expected
