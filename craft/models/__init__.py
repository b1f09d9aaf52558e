"""Models: plain ``nn.Module``s, each with an attrs config registered in ``MODELS``.

An entry of ``MODELS`` is a frozen attrs class whose fields are the TOML keys
of the ``[model]`` section and whose ``build()`` returns the module::

    @MODELS.register("my_model")
    @attrs.frozen
    class MyModelConfig:
        width: int = 64

        def build(self) -> nn.Module:
            return MyModel(self.width)
"""

from craft.registry import Registry

MODELS: Registry = Registry("model")


def need_vocab_size(config) -> None:
    """Refuse to build a language model whose ``vocab_size`` (or ``block_size``, where it has one) the run
    has not filled in yet."""
    if config.vocab_size is None:
        raise ValueError(
            "model.vocab_size is not set: a run fills it from the data's tokenizer; "
            "in Python pass vocab_size=tokenizer.vocab_size"
        )
    if getattr(config, "block_size", 0) is None:
        raise ValueError(
            "model.block_size is not set: a run fills it from the data's sequence length; "
            "in Python pass block_size=N"
        )

from craft.models.cnn import CNNConfig, SmallCNN  # noqa: E402  (registers "cnn")
from craft.models.resnet import ResNet, ResNetConfig  # noqa: E402  (registers "resnet")
from craft.models.gpt import GPT, GPTConfig  # noqa: E402  (registers "gpt")
from craft.models.lstm import CharLSTM, CharLSTMConfig  # noqa: E402  (registers "char_lstm")
from craft.models.captioner import Captioner, CaptionerConfig  # noqa: E402  (registers "captioner")

__all__ = [
    "MODELS", "CNNConfig", "Captioner", "CaptionerConfig", "CharLSTM", "CharLSTMConfig", "GPT", "GPTConfig",
    "ResNet", "ResNetConfig", "SmallCNN",
]
