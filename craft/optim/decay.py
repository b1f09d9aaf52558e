"""Weight decay: ``add_decayed_weights`` and the masks that choose which parameters decay.

Every optimizer decays matrices and convolution kernels only by default
(``default_decay_mask``): not biases, norm scales or embeddings, unlike a
plain ``torch.optim`` optimizer, which decays every parameter it holds.
``mask=lambda p: dict.fromkeys(p, True)`` decays them all, as torch does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor, nn

from craft.optim import foreach
from craft.optim.base import Transform, Updates, in_range, matching, selection, stateless
from craft.tree import Params

DecayMask = Mapping[str, bool] | Callable[[Params], Mapping[str, bool]]

_EMBEDDING_NAMES = ("wte", "wpe")


def embedding_name(module: str) -> bool:
    """Whether a module path names an embedding: a word of it (split at anything not a letter)
    starts with ``emb`` (``tok_emb``, ``embed``, ``embeddings.0``) or is ``wte`` or ``wpe``.
    Words only: ``members`` or ``remember`` hold ``emb`` but are not embeddings."""
    return any(w.startswith("emb") or w in _EMBEDDING_NAMES for w in re.split(r"[^a-z]+", module.lower()))


def default_decay_mask(params: Params) -> dict[str, bool]:
    """Decay matrices and conv kernels; not biases, norm scales or embeddings.

    Judged from the tree alone: a leaf decays if it has 2+ dims and its module
    path does not name an embedding (``embedding_name``). Use
    ``decay_mask_from_module`` where module types should decide instead.
    """
    return {name: p.ndim >= 2 and not embedding_name(name.rpartition(".")[0]) for name, p in params.items()}


def decay_mask_from_module(model: nn.Module) -> dict[str, bool]:
    """Decay the weights of ``Linear`` and convolution modules and nothing else."""
    decayed = (nn.Linear, nn.modules.conv._ConvNd)
    mask = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            mask[full] = isinstance(module, decayed) and p_name == "weight"
    return mask


def add_decayed_weights(weight_decay: float | Tensor, mask: DecayMask | None = None) -> Transform:
    """Add ``weight_decay * param`` to the updates of the leaves ``mask`` selects.

    Placed after ``scale_by_adam`` and before the learning rate, this is
    AdamW's decoupled decay; placed before, it is classic L2 (``SGD``, ``Adam``).
    ``mask`` is a ``{name: bool}`` mapping or a function of the params giving one;
    the default is ``default_decay_mask``. ``weight_decay`` may be a 0-d tensor
    (a hyperparameter held in the state, see ``inject_hyperparams``).
    """
    in_range("add_decayed_weights", "weight_decay", weight_decay)
    mask_fn = mask if callable(mask) else (lambda params: mask) if mask is not None else default_decay_mask

    def decay(u: Updates, params: Params | None) -> Updates:
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        if not isinstance(weight_decay, Tensor) and weight_decay == 0:
            return u
        matching(params, u, "the params", "add_decayed_weights")  # the same names and shapes
        selected = selection(mask_fn, params, "weight decay")
        names = [k for k in u if selected.get(k, False)]
        if not names:
            return u
        decaying = [params[k] for k in names]
        if isinstance(weight_decay, Tensor):  # `alpha` takes only Python numbers
            decaying, alpha = foreach.mul(decaying, weight_decay), 1
        else:
            alpha = weight_decay
        decayed = foreach.add([u[k] for k in names], decaying, alpha=alpha)
        return {**u, **dict(zip(names, decayed))}

    return stateless(decay)
