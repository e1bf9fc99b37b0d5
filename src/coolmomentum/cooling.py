"""Cooling for any optimizer: SGD's ``momentum`` or Adam's ``betas[0]`` along a schedule.

:class:`MomentumCooling` is a scheduler in the style of :mod:`torch.optim.lr_scheduler` that
sets the momentum coefficient of an optimizer you already use to ``rho_k`` of a CoolMomentum
schedule (:class:`coolmomentum.schedules.Schedule`) before its step ``k``. With the
``linear-temperature`` schedule this is the Demon momentum decay (Demon SGD, Demon Adam).

It cools the momentum only. CoolMomentum itself also scales the gradient by
``(1 + rho_k) / 2`` (its step is ``lr (1 + rho_k) / 2``, see :mod:`coolmomentum.torch`), so
``SGD`` under ``MomentumCooling`` is a baseline, not the paper's method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .schedules import Schedule
from .torch import CoolMomentum

__all__ = ["MomentumCooling"]


class MomentumCooling(LRScheduler):
    """Set each param group's momentum to ``rho_k`` of a cooling schedule before step ``k``.

    Args:
        optimizer: an optimizer whose defaults hold ``momentum`` (``SGD``, ``RMSprop``) or
            ``betas`` (``Adam``, ``AdamW``, ``NAdam``, ...; the first beta is cooled, the
            second left alone).
        total_steps: ``S``, the number of cooling steps; after ``hot_steps + S`` steps the
            momentum is 0 for good. Needed by every schedule but ``"constant"`` and callables.
        schedule: ``"cosine-temperature"`` (the default), ``"linear-temperature"``
            (Demon), ``"exponential"`` (the paper's Eq. 20; the default when ``alpha`` is
            given), ``"exponential-temperature"``,
            ``"constant"``, a callable ``step -> rho`` or a
            :class:`~coolmomentum.schedules.Schedule` (then give none of ``rho_0``,
            ``total_steps``, ``alpha``, ``hot_steps``).
        rho_0: the starting momentum; default: each group's momentum (or first beta) when
            the scheduler is built, as ``torch.optim`` schedulers take ``lr``.
        alpha: the paper's cooling rate, instead of ``total_steps`` (exponential only).
        hot_steps: steps held at ``rho_0`` before the cooling starts.
        last_epoch: as in :class:`torch.optim.lr_scheduler.LRScheduler`; keep the default
            and resume with :meth:`load_state_dict`.

    Call :meth:`step` after every ``optimizer.step()``, like any per-step scheduler: the
    momentum of step ``k`` (counted from 0) is then ``rho_k``, the value
    :func:`coolmomentum.schedules.rho` gives, and :meth:`get_last_momentum` returns it. The
    learning rate is left as it is, so another scheduler can drive it at the same time.
    :meth:`state_dict` holds plain numbers (it loads with ``torch.load(...,
    weights_only=True)``); a callable schedule is not saved: build the scheduler with the same
    callable, then load.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: float | None = None,
        schedule: str | Callable[[Any], Any] | Schedule | None = None,
        *,
        rho_0: float | None = None,
        alpha: float | None = None,
        hot_steps: int = 0,
        last_epoch: int = -1,
    ) -> None:
        if isinstance(optimizer, CoolMomentum):
            raise TypeError(
                "CoolMomentum cools its own rho: give total_steps= and schedule= to "
                "CoolMomentum instead of wrapping it in MomentumCooling"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not a torch.optim.Optimizer")
        if "betas" in optimizer.defaults:
            self.momentum_key = "betas"
        elif "momentum" in optimizer.defaults:
            self.momentum_key = "momentum"
        else:
            raise TypeError(
                f"{type(optimizer).__name__} has neither 'momentum' nor 'betas' among its "
                f"options, so MomentumCooling has nothing to cool"
            )
        if isinstance(schedule, Schedule):
            given = dict(rho_0=rho_0, total_steps=total_steps, alpha=alpha, hot_steps=hot_steps)
            extra = [key for key, value in given.items() if value not in (None, 0)]
            if extra:
                raise ValueError(
                    f"schedule is a Schedule, which already fixes {', '.join(extra)}; "
                    f"pass either the Schedule or its arguments"
                )
            self.schedules = [schedule for _ in optimizer.param_groups]
        else:
            self.schedules = []
            for i, group in enumerate(optimizer.param_groups):
                start = self._momentum(group) if rho_0 is None else rho_0
                if rho_0 is None and start == 0.0 and not callable(schedule):
                    raise ValueError(
                        f"param group {i} has {self.momentum_key} 0, so there is nothing to "
                        f"cool: build {type(optimizer).__name__} with a momentum, or pass rho_0"
                    )
                self.schedules.append(
                    Schedule.create(start, total_steps, alpha, schedule, hot_steps)
                )
        super().__init__(optimizer, last_epoch)

    def _momentum(self, group: dict[str, Any]) -> float:
        value = group["betas"][0] if self.momentum_key == "betas" else group["momentum"]
        return float(value)

    def get_lr(self) -> list[float | Tensor]:
        """The learning rates as they are: this scheduler drives the momentum only."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule: the next optimizer step uses ``rho`` of the next position."""
        super().step(epoch)
        self._apply()

    def _apply(self) -> None:
        for group, schedule in zip(self.optimizer.param_groups, self.schedules, strict=True):
            value = float(schedule(self.last_epoch))
            if self.momentum_key == "momentum":
                group["momentum"] = value
            elif isinstance(group["betas"][0], Tensor):  # tensor betas (capturable Adam)
                group["betas"][0].fill_(value)
            else:
                group["betas"] = (value, *group["betas"][1:])
        self._last_momentum = [self._momentum(group) for group in self.optimizer.param_groups]

    def get_last_momentum(self) -> list[float]:
        """The momentum (or first beta) each group uses in its next step."""
        return list(self._last_momentum)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["schedules"] = [
            dict(rho_0=s.rho_0, total_steps=s.total_steps, kind=s.kind, hot_steps=s.hot_steps)
            for s in self.schedules
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        saved = state.pop("schedules")
        if len(saved) != len(self.schedules):
            raise ValueError(
                f"this state_dict holds {len(saved)} schedules for an optimizer with "
                f"{len(self.schedules)} param groups"
            )
        for fields, mine in zip(saved, self.schedules, strict=True):
            if fields["kind"] == "callable" and mine.fn is None:
                raise ValueError(
                    "this state_dict was saved with a callable schedule, which is not saved; "
                    "build MomentumCooling with the same callable (schedule=...), then load"
                )
        self.schedules = [
            Schedule(**fields, fn=mine.fn if fields["kind"] == "callable" else None)
            for fields, mine in zip(saved, self.schedules, strict=True)
        ]
        super().load_state_dict(state)
        self._apply()
