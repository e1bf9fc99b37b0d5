"""CoolMomentum as a Keras 3 optimizer, for every Keras backend.

Per model variable, at step ``k`` (``optimizer.iterations``, counted from 0), with ``b`` the
momentum::

    b_k     = rho_k * b_{k-1} - (1 + rho_k) / 2 * g_k      (b_{-1} = 0)
    x_{k+1} = x_k + lr_k * b_k

with ``rho_k`` from :mod:`coolmomentum.schedules`, evaluated with ``keras.ops`` on the
optimizer's own step counter, so that it is saved and restored with the optimizer. The
velocity ``v_k = lr_k * b_k`` follows a learning-rate schedule as SGD's does; this is the
rule of :class:`coolmomentum.torch.CoolMomentum`, step for step.

Usage::

    from coolmomentum.keras import CoolMomentum

    model.compile(optimizer=CoolMomentum(learning_rate=0.01, rho_0=0.99, alpha=0.99998), ...)

Importing this module imports Keras (and so its backend).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from . import _stats
from ._numbers import check_number, is_number, schedule_float
from .schedules import RhoFn, Schedule, resolve_schedule

__all__ = ["CoolMomentum"]


@keras.saving.register_keras_serializable(package="coolmomentum")
class CoolMomentum(keras.optimizers.Optimizer):
    """Momentum SGD from Langevin dynamics whose momentum coefficient ``rho`` is annealed to 0.

    Args:
        learning_rate: ``lr``, the integration step ``dt**2``: a float, a
            ``keras.optimizers.schedules.LearningRateSchedule`` or a callable, as for every
            Keras optimizer. The effective SGD step is ``lr * (1 + rho) / 2``.
        rho_0: initial momentum coefficient, in ``[0, 1)``.
        total_steps: ``S``, the number of cooling steps; after ``hot_steps + S`` steps
            ``rho`` is 0 for good. Needed by every schedule but ``"constant"`` and callables.
        alpha: the paper's cooling rate, instead of ``total_steps`` for the exponential
            schedule: ``S = ln(1 - rho_0) / ln(alpha)``; ``alpha = 1`` means no cooling.
        schedule: ``"cosine-temperature"`` (the default), ``"linear-temperature"``,
            ``"exponential"`` (the paper's Eq. 20; the default when ``alpha`` is given),
            ``"exponential-temperature"``,
            ``"constant"``, or a callable ``step -> rho`` that
            receives the step as a floating-point backend scalar (use ``keras.ops`` in it).
            A callable cannot be serialized: ``get_config()``, and so ``model.save()``,
            raise ``ValueError`` for it; save the weights with ``model.save_weights()``.
        hot_steps: ``H``, steps held at ``rho_0`` before cooling starts.
        track_temperature: accumulate the temperature reported by :meth:`stats`; ``False``
            saves a reduction per variable and step.
        **kwargs: the base optimizer's options (``clipnorm``, ``global_clipnorm``,
            ``clipvalue``, ``weight_decay`` (decoupled: ``x *= 1 - lr * weight_decay``
            before the step), ``use_ema``, ``gradient_accumulation_steps``, ...).

    The schedule position is ``self.iterations`` (with gradient accumulation, the number of
    real updates). It, the momentum buffers and the temperature window are optimizer
    variables, so a model saved to ``.keras`` and loaded continues where it stopped.

    Each momentum buffer has its variable's dtype. Variables narrower than float32
    (``bfloat16``, ``float16``) are updated in float32: ``rho``, ``(1 + rho) / 2`` and
    ``lr`` are not rounded to the variable's dtype, and the momentum and the variable are
    rounded once per step, when stored.
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        rho_0: float = 0.99,
        total_steps: float | None = None,
        alpha: float | None = None,
        schedule: str | RhoFn | None = None,
        hot_steps: int = 0,
        track_temperature: bool = True,
        name: str = "coolmomentum",
        **kwargs: Any,
    ) -> None:
        if is_number(learning_rate):
            check_number("learning_rate", learning_rate, hint=" (the step dt**2, e.g. 0.01)")
            learning_rate = float(learning_rate)
        schedule_fn = Schedule.create(rho_0, total_steps, alpha, schedule, hot_steps)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._schedule = schedule_fn
        self.rho_0 = rho_0
        self.total_steps = total_steps
        self.alpha = alpha
        self.schedule = resolve_schedule(schedule, alpha)
        self.hot_steps = hot_steps
        self.track_temperature = track_temperature

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self._momentums = self.add_optimizer_variables(variables, "momentum")
        # The temperature is a mean over all the elements the optimizer updates.
        self._num_elements = sum(
            math.prod(v.shape)
            for v, momentum in zip(variables, self._momentums, strict=True)
            if momentum is not None
        )
        self._temperature_sum = self.add_variable(
            (),
            dtype=schedule_float(keras.backend.backend()),
            name="temperature_sum",
            aggregation="only_first_replica",
        )
        self._temperature_start = self.add_variable(
            (), dtype="int", name="temperature_start", aggregation="only_first_replica"
        )

    def rho(self) -> Any:
        """``rho`` for the step about to be taken, as a backend scalar."""
        dtype = schedule_float(keras.backend.backend())
        return ops.cast(self._schedule(ops.cast(self.iterations, dtype), ops=ops), dtype)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        rho = self.rho()
        momentum = self._momentums[self._get_variable_index(variable)]
        # In at least float32, so that the coefficients keep their precision next to
        # low-precision variables: rho = 0.99 cast to bfloat16 would be 0.98828, 1 - rho off
        # by 17 %. The momentum and the variable are rounded to their dtype when stored.
        dtype = "float64" if variable.dtype == "float64" else "float32"
        new_momentum = ops.subtract(
            ops.multiply(ops.cast(momentum, dtype), ops.cast(rho, dtype)),
            ops.multiply(ops.cast(gradient, dtype), ops.cast((1.0 + rho) / 2.0, dtype)),
        )
        new_momentum = ops.cast(new_momentum, momentum.dtype)
        velocity = ops.multiply(ops.cast(new_momentum, dtype), ops.cast(learning_rate, dtype))
        new_variable = ops.add(ops.cast(variable, dtype), velocity)
        self.assign(momentum, new_momentum)
        self.assign(variable, ops.cast(new_variable, variable.dtype))
        if self.track_temperature and self._num_elements:
            acc = self._temperature_sum.dtype
            self.assign_add(self._temperature_sum, ops.sum(ops.square(ops.cast(velocity, acc))))

    def stats(self, reset: bool = True) -> dict[str, Any]:
        """The statistics every port reports: ``step``, ``rho`` (of the latest step),
        ``temperature``, ``temperature_sum``, ``temperature_count`` and ``temperature_steps``.

        ``temperature`` is the mean of ``v**2`` over all updated elements and over the steps
        since the previous call with ``reset=True`` (``None`` when none were taken or
        tracking is off); ``temperature_sum`` and ``temperature_count`` are that sum and the
        number of element-steps it covers. Call it outside compiled code, e.g. from a
        callback.
        """
        step = int(keras.ops.convert_to_numpy(self.iterations))
        rho = float(self._schedule(max(step - 1, 0)))
        if not self.built:
            return _stats.window(step, rho, 0.0, 0, 0)
        window = step - int(keras.ops.convert_to_numpy(self._temperature_start))
        total, count = 0.0, 0
        if self.track_temperature:
            total = float(keras.ops.convert_to_numpy(self._temperature_sum))
            count = window * self._num_elements
        if reset:
            # Fresh values, never the iterations buffer itself: a jitted train step donates
            # every optimizer variable's buffer, and one buffer may not be donated twice.
            self._temperature_sum.assign(0.0)
            self._temperature_start.assign(step)
        return _stats.window(step, rho, total, count, window)

    def get_config(self) -> dict[str, Any]:
        if callable(self.schedule):
            raise ValueError(
                "a CoolMomentum optimizer with a callable schedule cannot be serialized "
                "(get_config, model.save): use one of the named schedules, or save the "
                "model's weights with model.save_weights() and rebuild the optimizer with "
                "the same callable"
            )
        config = super().get_config()
        config.update(
            {
                "rho_0": self.rho_0,
                "total_steps": self.total_steps,
                "alpha": self.alpha,
                "schedule": self.schedule,
                "hot_steps": self.hot_steps,
                "track_temperature": self.track_temperature,
            }
        )
        return config
