"""The captioner: shapes, causality, the image's influence, cache, generation, training through the step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from craft.generate import generate, generate_text
from craft.models import MODELS, Captioner, CaptionerConfig, ResNet, SmallCNN
from craft.optim import adamw
from craft.step import init_state, make_train_step

V = 11
BLOCK = 8
TINY = dict(vocab_size=V, block_size=BLOCK, widths=[8, 16], prefix_grid=2, n_layer=2, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def build(encoder: str = "resnet", seed: int = 0, **options) -> Captioner:
    torch.manual_seed(seed)
    return MODELS["captioner"](**{**TINY, "encoder": encoder, **options}).build()


def varied(encoder: str = "resnet", seed: int = 0) -> tuple[Captioner, dict]:
    """A float64 captioner in eval mode with weights large enough that greedy output depends on the inputs.

    (At the 0.02 init the text logits barely move with the image or the
    context, which would make the comparisons below trivially true.)
    """
    model = build(encoder, seed).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not name.startswith("encoder"):
                p.normal_(0, 0.5)
    return model, {**dict(model.named_parameters()), **dict(model.named_buffers())}


def images(n: int, size: int = 16, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def caption_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100)


def caption_inputs(batch: dict) -> tuple:
    return batch["input"], batch["image"]


# -- shapes and parameters ------------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet", "cnn"])
@pytest.mark.parametrize(("size", "T"), [(16, 1), (32, BLOCK), (48, 5)])
def test_captioner_maps_text_and_image_to_text_logits(encoder, size, T):
    model = build(encoder)
    idx = torch.randint(0, V, (3, T))
    assert model(idx, images(3, size, dtype=torch.float32)).shape == (3, T, V)


@pytest.mark.parametrize("encoder", ["resnet", "cnn"])
def test_every_parameter_is_used_and_no_classifier_head_is_built(encoder):
    model = build(encoder)
    model(torch.randint(0, V, (2, 4)), images(2, dtype=torch.float32)).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []
    assert isinstance(model.encoder, ResNet if encoder == "resnet" else SmallCNN)


@pytest.mark.parametrize("trunk", [lambda: ResNet(None, widths=(8, 16)), lambda: SmallCNN(None)])
def test_trunk_only_vision_models_have_the_classifiers_names_less_the_head(trunk):
    model = trunk()
    classifier = ResNet(4, widths=(8, 16)) if isinstance(model, ResNet) else SmallCNN(4)
    heads = {"head.weight", "head.bias", "fc.weight", "fc.bias"}
    assert set(model.state_dict()) == set(classifier.state_dict()) - heads
    assert model.features(torch.randn(2, 3, 24, 24)).shape[:2] == (2, model.out_channels)


def test_the_resnet_encoders_batchnorm_statistics_are_state_buffers():
    state = init_state(build("resnet"), adamw(1e-3))
    assert any(name.startswith("encoder.") and name.endswith("running_mean") for name in state.buffers)


def test_num_params_counts_tied_weights_once_and_can_leave_out_positions():
    model = build()
    tied = model.decoder.wte.weight.numel()
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) - model.num_params() == model.decoder.wpe.weight.numel()
    assert build(tie_weights=False).num_params() == model.num_params() + tied


# -- what the logits depend on --------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet", "cnn"])
def test_text_logits_depend_on_the_image_and_earlier_text_only(encoder):
    model, _ = varied(encoder)
    idx, image = torch.randint(0, V, (2, BLOCK)), images(2)
    later = idx.clone()
    later[:, 5:] = (later[:, 5:] + 1) % V
    with torch.no_grad():
        logits = model(idx, image)
        assert torch.allclose(model(later, image)[:, :5], logits[:, :5])  # causal
        assert not torch.allclose(model(later, image)[:, 5:], logits[:, 5:])
        other = model(idx, images(2, seed=1))
    assert (other - logits).abs().amin(dim=-1).gt(1e-6).all()  # every position sees the image


def test_each_caption_sees_its_own_image():
    model, _ = varied()
    idx, image = torch.randint(0, V, (2, 4)), images(2)
    with torch.no_grad():
        both = model(idx, image)
        changed = image.clone()
        changed[1] = images(1, seed=5)[0]
        again = model(idx, changed)
    assert torch.allclose(both[0], again[0]) and not torch.allclose(both[1], again[1])


# -- the cache ------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet", "cnn"])
def test_a_prefill_then_one_token_per_call_gives_the_full_forwards_logits(encoder):
    model, params = varied(encoder)
    idx, image = torch.randint(0, V, (2, BLOCK)), images(2)
    cache = model.init_cache(2)
    assert cache["k.0"].shape == (2, 2, 4 + BLOCK, 8)  # P=4 image positions, then the text
    with torch.no_grad():
        full = functional_call(model, params, (idx, image))
        steps = [functional_call(model, params, (idx[:, :3], image), {"cache": cache, "pos": 0})]
        for t in range(3, BLOCK):
            steps.append(functional_call(model, params, (idx[:, t : t + 1],), {"cache": cache, "pos": t}))
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)


@pytest.mark.parametrize("encoder", ["resnet", "cnn"])
def test_greedy_captions_with_the_cache_equal_those_without_it_also_once_the_text_slides(encoder):
    model, params = varied(encoder)
    runs = {
        (seed, use_cache): list(
            generate(
                model, params, [0], max_new_tokens=4 * BLOCK, temperature=0, use_cache=use_cache,
                context={"image": images(1, seed=seed)},
            )
        )
        for seed in (0, 1)
        for use_cache in (True, False)
    }
    assert runs[0, True] == runs[0, False] and runs[1, True] == runs[1, False]
    assert runs[0, True] != runs[1, True]  # the image matters
    assert len(set(runs[0, True])) > 2  # and so does the text: the comparison means something


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, c: m(torch.zeros(1, 3, dtype=torch.long)), "Captioner needs the image without a cache"),
        (lambda m, c: m(torch.zeros(1, 3, dtype=torch.long), cache=c), r"needs the image .* at the prefill \(pos=0\)"),
        (
            lambda m, c: m(torch.zeros(1, 1, dtype=torch.long), images(1, dtype=torch.float32), cache=c, pos=2),
            "Captioner got an image at pos=2, but the cache already holds it; pass image=None",
        ),
        (
            lambda m, c: m(torch.zeros(1, BLOCK + 1, dtype=torch.long), images(1, dtype=torch.float32)),
            f"a caption of {BLOCK + 1} tokens but block_size is {BLOCK}; feed at most {BLOCK} text positions",
        ),
        (
            lambda m, c: m(torch.zeros(1, 2, dtype=torch.long), cache=c, pos=BLOCK - 1),
            f"text positions {BLOCK - 1}..{BLOCK} but block_size is {BLOCK}",
        ),
        (
            lambda m, c: m(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 1, 16, 16)),
            r"image of shape \(2, 1, 16, 16\) for 2 captions; pass \(2, 3, H, W\)",
        ),
        (
            lambda m, c: m(torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, 16, 16)),
            r"image of shape \(1, 3, 16, 16\) for 2 captions",
        ),
    ],
)
def test_wrong_calls_fail_with_one_line_that_names_the_fix(call, message):
    model = build()
    with pytest.raises(ValueError, match=message) as error:
        call(model, model.init_cache(1))
    assert "\n" not in str(error.value)


# -- config ---------------------------------------------------------------------


def test_config_defaults_build_a_captioner_once_the_vocab_size_is_known():
    assert isinstance(MODELS["captioner"], type) and MODELS["captioner"] is CaptionerConfig
    with pytest.raises(ValueError, match="model.vocab_size is not set"):
        CaptionerConfig().build()
    with pytest.raises(ValueError, match="model.block_size is not set"):
        CaptionerConfig(vocab_size=V).build()  # a run takes it from the data
    model = CaptionerConfig(vocab_size=V, block_size=32).build()
    assert model.block_size == 32 and model.prefix_len == 16 and isinstance(model, Captioner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(encoder="vit"), "must be one of 'resnet', 'cnn', got 'vit'"),
        (dict(n_head=3), "must divide n_embd=128, got 3"),
        (dict(widths=[]), "must be a non-empty list of positive channel counts"),
        (dict(prefix_grid=0), "must be >= 1, got 0"),
        (dict(dropout=1.0), r"must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_refuses_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        CaptionerConfig(vocab_size=V, **options)


# -- training -------------------------------------------------------------------


def caption_batch(captions: list[list[int]], image: torch.Tensor, boundary: int = 0) -> dict[str, torch.Tensor]:
    """The shared batch layout: ``[B] + caption + [B]`` split into input/target, padded with 0 / -100."""
    T = max(len(c) for c in captions) + 1
    batch = {
        "image": image,
        "input": torch.zeros(len(captions), T, dtype=torch.long),
        "target": torch.full((len(captions), T), -100, dtype=torch.long),
    }
    for row, caption in enumerate(captions):
        seq = torch.tensor([boundary, *caption, boundary])
        batch["input"][row, : len(seq) - 1] = seq[:-1]
        batch["target"][row, : len(seq) - 1] = seq[1:]
    return batch


# Compiled through aot_eager_decomp_partition: dynamo traces the whole step (the trunk's features spliced
# in front of the text, the prefix masked out of the loss) and AOTAutograd differentiates it with
# inductor's decompositions. Inductor's code for the parts, the CNN and the GPT blocks, is checked by
# tests/test_compiled_path.py and tests/models/test_language_models.py; for the captioner it cost a
# minute cold here.
@pytest.mark.slow
def test_the_captioner_trains_through_the_compiled_step():
    torch.manual_seed(0)
    model = build("cnn", n_layer=1)
    batch = caption_batch([[1, 2, 3], [4, 5], [6, 7, 8, 9]], images(3, dtype=torch.float32))
    tx = adamw(1e-2)
    state = init_state(model, tx)
    compile = {"backend": "aot_eager_decomp_partition", "fullgraph": True}
    step = make_train_step(model, caption_loss, tx, inputs=caption_inputs, compile=compile)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0]


class Letters:
    """A toy tokenizer: one id per character of ``"\\nabcdefgh"``; id 0 is the boundary."""

    alphabet = "\nabcdefgh"

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


def test_a_tiny_captioner_learns_to_caption_a_few_images_exactly():
    tokenizer, captions = Letters(), ["abc", "bag", "face", "head", "cab"]
    pictures = images(len(captions), dtype=torch.float32)
    batch = caption_batch([tokenizer.encode(c) for c in captions], pictures)
    torch.manual_seed(0)
    model = MODELS["captioner"](**{**TINY, "vocab_size": len(tokenizer.alphabet), "n_embd": 32}).build()
    tx = adamw(1e-2)
    state = init_state(model, tx)
    step = make_train_step(model, caption_loss, tx, inputs=caption_inputs, compile=False)
    for _ in range(150):
        state, metrics = step(state, batch)
    params = {**state.params, **state.buffers}
    written = [
        generate_text(
            model, params, tokenizer, "\n", max_new_tokens=BLOCK, temperature=0, stop="\n",
            context={"image": picture[None]},
        )
        for picture in pictures
    ]
    assert written == captions, float(metrics["loss"])
