"""Optimizers (``OPTIMIZERS``) and schedules (``SCHEDULES``) as pure transforms."""

from craft.optim import foreach
from craft.optim.alias import OPTIMIZERS, adam, adamw, sgd
from craft.optim.base import (
    OptState,
    Schedule,
    Transform,
    Updates,
    apply_updates,
    chain,
    identity,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
)
from craft.optim.hyperparams import InjectState, get_hyperparams, inject_hyperparams, set_hyperparams
from craft.optim.privacy import clip_per_example, dp_aggregate, per_example_norms
from craft.optim.schedules import (
    SCHEDULES,
    constant,
    cosine_decay,
    linear_warmup,
    step_decay,
    warmup_cosine,
)
from craft.optim.transforms import (
    add_decayed_weights,
    clip_by_global_norm,
    decay_mask_from_module,
    default_decay_mask,
    scale_by_adam,
    trace,
)

__all__ = [
    "InjectState", "OPTIMIZERS", "SCHEDULES", "OptState", "Schedule", "Transform", "Updates",
    "adam", "adamw", "foreach", "add_decayed_weights", "apply_updates", "chain",
    "clip_by_global_norm", "constant", "cosine_decay", "decay_mask_from_module",
    "clip_per_example", "default_decay_mask", "dp_aggregate", "get_hyperparams",
    "identity", "inject_hyperparams", "linear_warmup", "scale",
    "per_example_norms", "scale_by_adam", "scale_by_learning_rate", "scale_by_schedule",
    "set_hyperparams", "sgd",
    "step_decay", "trace", "warmup_cosine",
]
