"""An image captioner: a convolutional encoder whose features prefix a GPT's text.

The image is encoded into ``P = prefix_grid**2`` tokens: the encoder's
feature map is average-pooled to ``prefix_grid x prefix_grid`` cells, each
cell projected to ``n_embd`` and given a learned position embedding. The text
tokens follow at positions ``P .. P+T-1``, and the whole sequence goes through
the same causal GPT blocks; the logits are those of the text positions only.

Why a prefix rather than cross-attention: the GPT blocks and their KV cache
are reused unchanged. The image tokens are just the first ``P`` cached
positions, computed once at prefill; no new attention type, and with small
images ``P`` stays small (16 by default).

Positions: ``pos`` and ``block_size`` count **text** positions, so generation
slides and re-prefills the text exactly as for a GPT (passing the image again
at every prefill, see ``craft.generate``'s ``context``).
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from craft.models import MODELS, need_vocab_size
from craft.models.cnn import SmallCNN
from craft.models.gpt import GPT, Cache, init_gpt_weights
from craft.models.resnet import ResNet
from craft.validators import at_least, between, channel_widths, divides, one_of


class Captioner(nn.Module):
    """``forward(idx (B, T), image (B, C, H, W) | None, cache=None, pos=0) -> logits (B, T, vocab_size)``.

    Without ``cache``, ``image`` is required and ``idx`` holds text positions
    ``0 .. T-1``. With ``cache`` (from ``init_cache``), ``idx`` holds text
    positions ``pos .. pos+T-1``: at ``pos == 0`` (prefill) ``image`` is
    required and its tokens are cached with the text; at ``pos > 0`` the image
    is already in the cache and ``image`` must be None. A prefill followed by
    one token per call gives the logits of one full forward.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int = 32,
        encoder: str = "resnet",
        in_channels: int = 3,
        widths=(32, 64, 128),
        blocks: int = 1,
        prefix_grid: int = 4,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 128,
        dropout: float = 0.0,
        bias: bool = True,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        if encoder not in ("resnet", "cnn"):
            raise ValueError(f"encoder must be 'resnet' or 'cnn', got {encoder!r}")
        self.block_size = block_size  # text positions
        self.in_channels = in_channels
        self.prefix_len = prefix_grid**2  # P image tokens
        self.encoder = (
            ResNet(None, in_channels, tuple(widths), blocks) if encoder == "resnet" else SmallCNN(None, in_channels)
        )
        self.pool = nn.AdaptiveAvgPool2d(prefix_grid)
        self.project = nn.Linear(self.encoder.out_channels, n_embd, bias=bias)
        init_gpt_weights(self.project)
        # The decoder's positions 0 .. P-1 are the image's, P .. P+block_size-1 the text's.
        P = self.prefix_len
        self.decoder = GPT(vocab_size, P + block_size, n_layer, n_head, n_embd, dropout, bias, tie_weights)

    def forward(self, idx: Tensor, image: Tensor | None = None, cache: Cache | None = None, pos: int = 0) -> Tensor:
        prefill = cache is None or pos == 0
        self._check(idx, image, prefill, 0 if cache is None else pos)
        P = self.prefix_len
        start = P + (0 if cache is None else pos)  # the first text token's position in the decoder
        x = self.decoder.embed(idx, start)  # (B, T, C)
        if prefill:
            x = torch.cat([self.encode(image), x], dim=1)  # (B, P + T, C)
        x = self.decoder.trunk(x, cache, 0 if prefill else start)  # (B, P + T, C) or (B, T, C)
        if prefill:
            x = x[:, P:]  # (B, T, C): the text positions
        return self.decoder.lm_head(x)  # (B, T, vocab_size)

    def encode(self, image: Tensor) -> Tensor:
        """The image's prefix tokens ``(B, P, n_embd)``, position embeddings included."""
        features = self.pool(self.encoder.features(image))  # (B, C_enc, grid, grid)
        cells = features.flatten(2).transpose(1, 2)  # (B, P, C_enc), row by row
        return self.project(cells) + self.decoder.wpe.weight[: self.prefix_len]  # (B, P, C)

    def init_cache(self, batch_size: int, *, device=None, dtype=None) -> Cache:
        """GPT's cache over ``P + block_size`` positions: image tokens first, then the text."""
        return self.decoder.init_cache(batch_size, device=device, dtype=dtype)

    def num_params(self, non_embedding: bool = True) -> int:
        """Number of parameters (tied weights count once); ``non_embedding`` leaves out position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.decoder.wpe.weight.numel() if non_embedding else n

    def _check(self, idx: Tensor, image: Tensor | None, prefill: bool, pos: int) -> None:
        B, T = idx.shape
        if pos + T > self.block_size:
            where = f"text positions {pos}..{pos + T - 1}" if pos else f"a caption of {T} tokens"
            raise ValueError(
                f"Captioner got {where} but block_size is {self.block_size}; "
                f"feed at most {self.block_size} text positions (or build the model with a larger block_size)"
            )
        if not prefill:
            if image is not None:
                raise ValueError(
                    f"Captioner got an image at pos={pos}, but the cache already holds it; "
                    "pass image=None after the prefill (pos=0)"
                )
            return
        if image is None:
            raise ValueError(
                "Captioner needs the image without a cache and at the prefill (pos=0); "
                f"pass image as a float tensor (B, {self.in_channels}, H, W)"
            )
        if image.ndim != 4 or image.shape[0] != B or image.shape[1] != self.in_channels:
            raise ValueError(
                f"Captioner got an image of shape {tuple(image.shape)} for {B} captions; "
                f"pass ({B}, {self.in_channels}, H, W) (model.in_channels is the image's channels)"
            )


@MODELS.register("captioner")
@attrs.frozen
class CaptionerConfig:
    """``[model] kind = "captioner"``: image encoder + GPT decoder; ``vocab_size`` comes from the data.

    ``block_size`` counts text positions (left unset: the data's caption length, ``data.max_length``
    or the longest caption); the image adds ``prefix_grid**2``
    more. ``widths`` and ``blocks`` shape the ResNet encoder; ``encoder =
    "cnn"`` uses the seed CNN's two conv layers instead (and ignores them).
    """

    vocab_size: int | None = attrs.field(default=None, validator=at_least(1))
    block_size: int | None = attrs.field(default=None, validator=at_least(1))
    encoder: str = attrs.field(default="resnet", validator=one_of("resnet", "cnn"))
    in_channels: int = attrs.field(default=3, validator=at_least(1))
    widths: list[int] = attrs.field(factory=lambda: [32, 64, 128], validator=channel_widths)
    blocks: int = attrs.field(default=1, validator=at_least(1))
    prefix_grid: int = attrs.field(default=4, validator=at_least(1))
    n_layer: int = attrs.field(default=2, validator=at_least(1))
    n_head: int = attrs.field(default=4, validator=[at_least(1), divides("n_embd")])
    n_embd: int = attrs.field(default=128, validator=at_least(1))
    dropout: float = attrs.field(default=0.0, validator=between(0, 1, high_open=True))
    bias: bool = True
    tie_weights: bool = True

    def build(self) -> Captioner:
        need_vocab_size(self)
        return Captioner(**attrs.asdict(self))
