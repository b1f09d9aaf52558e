"""Data: plain Python iterators of batches (dicts of tensors); ``DATASETS`` table.

An entry of ``DATASETS`` is a frozen attrs class whose fields are the TOML keys
of the ``[data]`` section and whose ``build(split, *, seed, rank=0,
world_size=1)`` gives, for ``split="train"``, an infinite resumable iterator
(``TrainBatches``) and, for ``split="val"``, a finite re-iterable
(``EvalBatches``); see ``craft.data.batching``.
"""

from craft.registry import Registry

DATASETS: Registry = Registry("dataset")

from craft.data.batching import EvalBatches, TrainBatches  # noqa: E402
# Importing registers "image_folder" and "shapes".
from craft.data.images import ImageFolderConfig  # noqa: E402
from craft.data.shapes import ShapesConfig, ShapeSpec, describe, render, write_shapes_folder  # noqa: E402
# Importing registers "text".
from craft.data.text import TextConfig  # noqa: E402
# Importing registers "tokens".
from craft.data.tokens import TokensConfig  # noqa: E402
from craft.data.tokenizers import (  # noqa: E402
    BOUNDARY,
    CharTokenizer,
    UnknownCharactersError,
    UnknownWordsError,
    WordTokenizer,
    load_tokenizer,
)
# Importing registers "hf_dataset" (the datasets package is imported only when one is built).
from craft.data.hf_dataset import HFDatasetConfig  # noqa: E402
# Importing registers "caption_folder" and "shape_captions".
from craft.data.captions import CaptionFolderConfig, ShapeCaptionsConfig, write_caption_folder  # noqa: E402

__all__ = [
    "BOUNDARY",
    "CaptionFolderConfig",
    "CharTokenizer",
    "DATASETS",
    "EvalBatches",
    "HFDatasetConfig",
    "ImageFolderConfig",
    "ShapeCaptionsConfig",
    "ShapeSpec",
    "ShapesConfig",
    "TextConfig",
    "TokensConfig",
    "TrainBatches",
    "UnknownCharactersError",
    "UnknownWordsError",
    "WordTokenizer",
    "describe",
    "load_tokenizer",
    "render",
    "write_caption_folder",
    "write_shapes_folder",
]
