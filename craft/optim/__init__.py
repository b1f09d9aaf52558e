"""Optimizers (``OPTIMIZERS``) and schedules (``SCHEDULES``) as pure transforms."""

from craft.optim import foreach
from craft.optim.alias import OPTIMIZERS, adagrad, adam, adamw, lion, rmsprop, sgd
from craft.optim.base import (
    OptState,
    Schedule,
    ScheduleState,
    Transform,
    Updates,
    apply_updates,
    chain,
    device_of,
    identity,
    map_scale,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    stateless,
)
from craft.optim.combine import (
    ApplyIfFiniteState,
    EmaState,
    LookaheadState,
    MaskedState,
    MultiStepsState,
    PartitionState,
    apply_if_finite,
    ema,
    find_state,
    lookahead,
    masked,
    multi_steps,
    partition,
    set_to_zero,
)
from craft.optim.decay import add_decayed_weights, decay_mask_from_module, default_decay_mask
from craft.optim.groups import Group, clip_trained, decay_all, group_labels, param_groups
from craft.optim.muon import MuonState, muon, newton_schulz, orthogonalize, scale_by_muon
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
    AdamState,
    LionState,
    NoiseState,
    RmsState,
    TraceState,
    add_noise,
    clip,
    clip_by_global_norm,
    scale_by_adam,
    scale_by_lion,
    scale_by_rms,
    scale_by_rss,
    scale_by_sign,
    trace,
)

STATE_TYPES = (
    ScheduleState, AdamState, TraceState, RmsState, LionState, NoiseState, InjectState, PartitionState,
    MaskedState, MultiStepsState, LookaheadState, EmaState, ApplyIfFiniteState, MuonState,
)
"""Every optimizer-state NamedTuple craft defines (``craft.step`` makes them ``torch.load`` safe globals)."""

__all__ = [
    "AdamState", "ApplyIfFiniteState", "EmaState", "InjectState", "LionState", "LookaheadState",
    "MaskedState", "MultiStepsState", "MuonState", "NoiseState", "OPTIMIZERS", "OptState", "PartitionState",
    "RmsState", "SCHEDULES", "STATE_TYPES", "Schedule", "ScheduleState", "TraceState", "Transform",
    "Updates", "adagrad", "adam", "adamw", "add_decayed_weights", "add_noise", "apply_if_finite",
    "apply_updates", "chain", "clip", "clip_by_global_norm", "clip_per_example", "constant",
    "cosine_decay", "decay_mask_from_module", "default_decay_mask", "device_of", "dp_aggregate", "ema",
    "find_state", "foreach", "Group", "clip_trained", "decay_all", "group_labels", "param_groups", "get_hyperparams", "identity", "inject_hyperparams", "linear_warmup",
    "lion", "lookahead", "map_scale", "masked", "multi_steps", "muon", "newton_schulz", "orthogonalize", "partition", "per_example_norms",
    "rmsprop", "scale", "scale_by_adam", "scale_by_learning_rate", "scale_by_lion", "scale_by_muon", "scale_by_rms",
    "scale_by_rss", "scale_by_schedule", "scale_by_sign", "set_hyperparams", "set_to_zero", "sgd",
    "stateless", "step_decay", "trace", "warmup_cosine",
]
