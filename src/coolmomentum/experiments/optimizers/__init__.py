"""The optimizers a run trains with.

- ``kinds``: the registry, one entry per optimizer name (:data:`~.kinds.KINDS`): its own
  hyperparameters, its builder, the learning-rate schedules it takes, what it reports as
  momentum
- ``spec``: :class:`~.spec.OptimizerSpec`, one optimizer of a run, from flat settings
- ``lr``: the learning rate of every step
- ``run_optimizer``: :class:`~.run_optimizer.RunOptimizer`, what the training loop talks to
- ``tf_rmsprop``: the TF RMSProp baseline
"""

from .kinds import (
    KINDS,
    SCHEDULE_FREE_BN_BATCHES,
    MomentumReport,
    MomentumWarmup,
    RunContext,
    kind,
)
from .lr import lr_at
from .run_optimizer import RunOptimizer, build_optimizer, param_groups
from .spec import OptimizerSpec, canonical_settings
from .tf_rmsprop import TFRMSprop

__all__ = [
    "KINDS",
    "SCHEDULE_FREE_BN_BATCHES",
    "MomentumReport",
    "MomentumWarmup",
    "OptimizerSpec",
    "RunContext",
    "RunOptimizer",
    "TFRMSprop",
    "build_optimizer",
    "canonical_settings",
    "kind",
    "lr_at",
    "param_groups",
]
