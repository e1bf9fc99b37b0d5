"""CoolMomentum in timm's optimizer factory: importing this module registers it.

After ``import coolmomentum.integrations.timm``::

    optimizer = timm.optim.create_optimizer_v2(
        model, opt="coolmomentum", lr=0.01, weight_decay=5e-4,
        rho_0=0.99, total_steps=epochs * updates_per_epoch)

builds :class:`coolmomentum.torch.CoolMomentum` with timm's param groups (no weight decay
for biases and normalization weights, layer-wise LR decay with ``layer_decay=``). timm's
``train.py`` takes it with ``--device-modules coolmomentum.integrations.timm`` (which
imports this module before the optimizer is built) and ``--opt coolmomentum --opt-kwargs
rho_0=0.99 total_steps=N --sched step --decay-rate 1 --warmup-epochs 0`` (a constant LR:
the cooling replaces the LR decay). timm's ``momentum``, ``eps`` and ``betas`` options do
not apply: ``rho_0`` is CoolMomentum's own argument.

Needs timm 1.0.12 or newer, the first with an optimizer registry.
"""

from __future__ import annotations

try:
    import timm
except ModuleNotFoundError as e:
    if e.name != "timm":  # timm is there but one of its own imports failed
        raise
    raise ImportError(
        'coolmomentum.integrations.timm needs timm: pip install "coolmomentum[timm]"'
    ) from e
import timm.optim

if not hasattr(timm.optim, "OptimInfo"):
    raise ImportError(
        f"coolmomentum.integrations.timm needs timm >= 1.0.12, the first with an optimizer "
        f"registry; this is timm {timm.__version__}: pip install -U timm"
    )

from timm.optim import OptimInfo
from timm.optim._optim_factory import default_registry

from ..torch import CoolMomentum

__all__ = ["NAME"]

NAME = "coolmomentum"

default_registry.register(
    OptimInfo(
        name=NAME,
        opt_class=CoolMomentum,
        description="CoolMomentum: momentum SGD from Langevin dynamics, rho annealed to 0",
        has_eps=False,
        has_momentum=False,
        has_betas=False,
    )
)
