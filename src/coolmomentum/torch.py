"""CoolMomentum as a ``torch.optim.Optimizer``.

Per parameter tensor, at optimizer step ``k`` (counted from 0)::

    v_k     = rho_k * v_{k-1} - lr * (1 + rho_k) / 2 * g_k      (v_{-1} = 0)
    x_{k+1} = x_k + v_k

with ``rho_k`` from :mod:`coolmomentum.schedules`. At a constant ``rho`` this is exactly
``torch.optim.SGD(lr=lr * (1 + rho) / 2, momentum=rho)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._numbers import check_number, schedule_float
from .schedules import RhoFn, Schedule

__all__ = ["CoolMomentum"]

_SCHEDULE_KEYS = ("rho_0", "total_steps", "alpha", "schedule", "hot_steps")
# Per-group tensors that live in ``param_groups`` (and so in ``state_dict()["param_groups"]``):
# the schedule position and the temperature window.
_GROUP_STATE = ("step", "temperature_start", "temperature_sum", "temperature_count")


def _schedule(group: dict[str, Any]) -> Schedule:
    return Schedule.create(**{key: group[key] for key in _SCHEDULE_KEYS})


class CoolMomentum(Optimizer):
    r"""Momentum SGD from Langevin dynamics whose momentum coefficient ``rho`` is annealed to 0.

    Args:
        params: parameters or param groups; every argument below can differ per group, and
            each group follows its own schedule.
        lr: the integration step ``dt**2`` (float or 0-d tensor). The effective SGD step is
            ``lr * (1 + rho) / 2``: ``lr`` at the start, ``lr / 2`` when cooled.
        rho_0: initial momentum coefficient, in ``[0, 1)``.
        total_steps: ``S``, the number of cooling steps; after ``hot_steps + S`` steps
            ``rho`` is 0 for good. Needed by every schedule but ``"constant"`` and callables.
        alpha: the paper's cooling rate, instead of ``total_steps`` for the exponential
            schedule: ``S = ln(1 - rho_0) / ln(alpha)``; ``alpha = 1`` means no cooling.
        schedule: ``"exponential"`` (paper, default), ``"exponential-temperature"``,
            ``"linear-temperature"``, ``"constant"``, or a callable ``step -> rho``. A callable
            gets an ``int`` in eager mode and a 0-d tensor under ``torch.compile`` or with
            ``capturable=True`` (use torch ops then). It is not saved by ``state_dict()``:
            pass the same callable again when you load.
        hot_steps: ``H``, steps held at ``rho_0`` before cooling starts.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * x``), as in the
            paper's code; with ``decoupled_weight_decay=True`` the weights are shrunk instead
            (``x *= 1 - lr * weight_decay``), as AdamW does.
        maximize: ascend the objective instead of descending it.
        foreach: use the multi-tensor kernels (default); ``False`` runs the reference loop.
        capturable: keep the schedule position on the parameters' device and compute ``rho``
            there, so that ``step()`` can be captured in a CUDA graph.
        track_temperature: accumulate the temperature reported by :meth:`stats` (on the
            device, without synchronizing); ``False`` saves a reduction per step.
        noise_std: standard deviation of Gaussian noise added to every gradient element
            before the update: the random force of Langevin dynamics, for full-batch
            (deterministic) objectives that have no minibatch noise. Default 0.
        generator: the ``torch.Generator`` the noise is drawn from, on the parameters'
            device; by default one per device, seeded from ``torch.initial_seed()``. The
            generators' states are saved by ``state_dict()``.

    After every step each param group holds ``momentum``, the ``rho`` of that step
    (``rho_0`` before the first; a 0-d tensor with ``capturable=True`` or under
    ``torch.compile``), where tools made for ``torch.optim.SGD`` look for it, e.g. Lightning's
    ``LearningRateMonitor(log_momentum=True)``. It is a read-only mirror: writing it does not
    steer the schedule, and the next step overwrites it. A scheduler that cycles the momentum,
    such as ``OneCycleLR`` or ``CyclicLR`` with their default ``cycle_momentum=True``, has no
    effect on CoolMomentum (``rho`` follows the cooling schedule); pass
    ``cycle_momentum=False``.

    The step count, the schedule position and the temperature window are saved by
    ``state_dict()``; a run resumed from it continues exactly, and the saved dict loads with
    ``torch.load(..., weights_only=True)``. The schedule counts calls to ``step()``, including
    those in which a group had no gradients.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        rho_0: float = 0.99,
        total_steps: float | None = None,
        *,
        alpha: float | None = None,
        schedule: str | RhoFn = "exponential",
        hot_steps: int = 0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        track_temperature: bool = True,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            rho_0=rho_0,
            total_steps=total_steps,
            alpha=alpha,
            schedule=schedule,
            hot_steps=hot_steps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            track_temperature=track_temperature,
            noise_std=noise_std,
            # A read-only mirror of rho for tools that look for SGD's key (e.g. Lightning's
            # LearningRateMonitor(log_momentum=True) checks that the defaults name it); each
            # group holds its own value, set in add_param_group and after every step.
            momentum=None,
        )
        self._generators: dict[str, torch.Generator] = {}
        if generator is not None:
            self._generators[str(generator.device)] = generator
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # A group that names one of total_steps / alpha overrides the other's default.
        if "alpha" in param_group and "total_steps" not in param_group:
            param_group["total_steps"] = None
        if "total_steps" in param_group and "alpha" not in param_group:
            param_group["alpha"] = None
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
        except ValueError:
            self.param_groups.pop()
            raise
        group["momentum"] = self._latest_rho(group)

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError(
                    f"lr as a tensor must hold one element, got shape {tuple(lr.shape)}"
                )
        else:
            check_number("lr", lr, hint=" (the step dt**2, e.g. 0.01)")
        for key in ("weight_decay", "noise_std"):
            check_number(key, group[key])
        _schedule(group)  # raises ValueError naming the bad schedule argument
        for key in _GROUP_STATE:
            if key in group and not isinstance(group[key], Tensor):
                raise ValueError(f"param group key {key!r} is reserved for the optimizer's state")

    def _init_group_state(self, group: dict[str, Any]) -> None:
        """Create (or move to the right device) the group's step and temperature tensors.

        Counts are int64 0-d tensors: exact for any run length. The sum of ``v**2`` is a
        one-element float64 tensor: ``torch.compile`` drops in-place updates of 0-d float64
        CPU tensors (seen with torch 2.13), and one element keeps it a real tensor there.
        """
        params = group["params"]
        device = params[0].device if params else torch.device("cpu")
        step_device = device if group["capturable"] else torch.device("cpu")
        acc_dtype = getattr(torch, schedule_float("torch", device.type))
        for key, where, dtype, shape in (
            ("step", step_device, torch.int64, ()),
            ("temperature_start", step_device, torch.int64, ()),
            ("temperature_sum", device, acc_dtype, (1,)),
            ("temperature_count", device, torch.int64, ()),
        ):
            value = group.get(key)
            if value is None:
                group[key] = torch.zeros(shape, dtype=dtype, device=where)
            else:
                group[key] = value.to(device=where, dtype=dtype).reshape(shape)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(torch.initial_seed())
        return self._generators[key]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A callable schedule is saved as None: the one this optimizer was built with stays.
        callables = [g["schedule"] for g in self.param_groups]
        for saved, mine in zip(state_dict["param_groups"], callables, strict=False):
            if saved.get("schedule") is None and not callable(mine):
                raise ValueError(
                    "this state_dict was saved with a callable schedule, which is not saved; "
                    "construct the optimizer with the same callable (schedule=...), then load"
                )
        generator_states = state_dict.get("noise_generators", {})
        super().load_state_dict(state_dict)
        for device, rng_state in generator_states.items():
            self._generator(torch.device(device)).set_state(rng_state)
        for group, mine in zip(self.param_groups, callables, strict=False):
            if group["schedule"] is None:
                group["schedule"] = mine
            self._init_group_state(group)
            group["momentum"] = self._latest_rho(group)

    @staticmethod
    def _latest_rho(group: dict[str, Any]) -> float:
        """The ``rho`` of the group's latest step (``rho_0`` before the first), as a float."""
        step = int(group["step"].item()) if "step" in group else 0
        return float(_schedule(group)(max(step - 1, 0)))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for group in state["param_groups"]:
            if callable(group["schedule"]):
                group["schedule"] = None
        if self._generators:
            state["noise_generators"] = {k: g.get_state() for k, g in self._generators.items()}
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step; ``closure``, if given, re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            if "step" not in group:
                self._init_group_state(group)
            params: list[Tensor] = []
            grads: list[Tensor] = []
            bufs: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "CoolMomentum does not support sparse gradients; use a dense "
                        "embedding (sparse=False) or torch.optim.SparseAdam for it"
                    )
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                # DTensor (FSDP2, tensor parallel) shards are updated in place, locally.
                params.append(_local(p))
                grads.append(_local(p.grad))
                bufs.append(_local(state["momentum_buffer"]))

            if group["noise_std"]:
                # Drawn tensor by tensor in parameter order, so every path sees the same noise.
                std = group["noise_std"]
                grads = [
                    torch.randn_like(g, generator=self._generator(g.device)).mul_(std).add_(g)
                    for g in grads
                ]
            step = group["step"]
            rho, coef = self._coefficients(group, step)
            update = _foreach_update if group["foreach"] is not False else _single_tensor_update
            sq_norm = update(
                params,
                grads,
                bufs,
                rho=rho,
                coef=coef,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                maximize=group["maximize"],
                track_temperature=group["track_temperature"],
            )
            if sq_norm is not None:
                # Sums of v**2 and of element counts: their ratio is the mean, on one rank or,
                # after summing over ranks, over every shard (stats(all_reduce=True)).
                acc = group["temperature_sum"]
                acc.add_(sq_norm.to(device=acc.device, dtype=acc.dtype))
                group["temperature_count"].add_(sum(t.numel() for t in _as_real(params)))
            step.add_(1)
            group["momentum"] = rho
        return loss

    @staticmethod
    def _coefficients(group: dict[str, Any], step: Tensor) -> tuple[Any, Any]:
        """``rho_k`` and ``lr * (1 + rho_k) / 2``: Python floats in eager mode, else tensors."""
        schedule = _schedule(group)
        lr = group["lr"]
        if group["capturable"] or torch.compiler.is_compiling():
            real = getattr(torch, schedule_float("torch", step.device.type))
            rho = schedule(step.to(real), ops=torch)
        else:
            rho = schedule(int(step.item()))  # a CPU tensor: no device synchronization
            if isinstance(rho, Tensor):  # a callable schedule may return a tensor
                rho = rho.item()
        return rho, lr * (1 + rho) / 2

    @torch.no_grad()
    def stats(
        self, reset: bool = True, *, all_reduce: bool = False, process_group: Any = None
    ) -> list[dict[str, Any]]:
        """One dict per param group: ``step``, ``rho``, ``lr`` and ``temperature``.

        ``step`` is the number of steps taken; ``rho`` the coefficient of the latest step
        (``rho_0`` before the first); ``temperature`` the mean over the group's elements of
        ``v_k**2``, averaged over the steps since the previous call with ``reset=True``
        (``None`` when none were taken or tracking is off); ``temperature_steps`` the number
        of steps in that window. This call synchronizes with the device; ``step()`` never does.

        With ``all_reduce=True`` (a collective: every rank of ``process_group``, default the
        world, must call it) the temperature is the mean over the elements of every rank:
        over all shards with FSDP2 or ``ZeroRedundancyOptimizer``, and the same value as one
        rank's with plain data parallelism.

        With FSDP2 or ``ZeroRedundancyOptimizer`` each rank's window holds sums over its own
        shards, and a sharded (DCP) or consolidated (ZeRO) checkpoint keeps one rank's copy
        of the group state: checkpoint right after a call with ``reset=True`` to carry the
        window exactly.
        """
        out = []
        for group in self.param_groups:
            if "step" not in group:
                self._init_group_state(group)
            step = int(group["step"].item())
            rho = self._latest_rho(group)
            window = step - int(group["temperature_start"].item())
            total_t = group["temperature_sum"]
            sums = torch.cat([total_t, group["temperature_count"].to(total_t.dtype).reshape(1)])
            if all_reduce:
                if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                    raise ValueError(
                        "stats(all_reduce=True) sums over the ranks of a process group; "
                        "call torch.distributed.init_process_group() first"
                    )
                torch.distributed.all_reduce(sums, group=process_group)
            total, count = sums.tolist()
            temperature = None
            if group["track_temperature"] and window > 0 and count > 0:
                temperature = total / count
            lr = group["lr"]
            out.append(
                {
                    "step": step,
                    "rho": rho,
                    "lr": float(lr),
                    "temperature": temperature,
                    "temperature_steps": window,
                }
            )
            if reset:
                group["temperature_sum"].zero_()
                group["temperature_count"].zero_()
                group["temperature_start"].copy_(group["step"])
        return out


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (a view: in-place updates reach the DTensor); else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _as_real(tensors: list[Tensor]) -> list[Tensor]:
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


def _single_tensor_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    rho: float | Tensor,
    coef: float | Tensor,
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    track_temperature: bool,
) -> Tensor | None:
    """The reference loop, one tensor at a time; returns ``sum(v**2)`` when tracking."""
    norms = []
    scalar_mode = not any(isinstance(x, Tensor) for x in (rho, coef, lr))
    for param, grad, buf in zip(_as_real(params), _as_real(grads), _as_real(bufs), strict=False):
        if maximize:
            grad = -grad
        if weight_decay:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        if scalar_mode:
            buf.mul_(rho).add_(grad, alpha=-cast(float, coef))
        else:
            buf.mul_(rho).add_(grad * -coef)
        param.add_(buf)
        if track_temperature:
            norms.append(torch.linalg.vector_norm(buf, dtype=_norm_dtype(buf)))
    if not track_temperature or not norms:
        return None
    return _total([n.square() for n in norms])


def _foreach_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    rho: float | Tensor,
    coef: float | Tensor,
    lr: float | Tensor,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    track_temperature: bool,
) -> Tensor | None:
    """The multi-tensor path: same arithmetic as :func:`_single_tensor_update`, per device/dtype."""
    if not params:
        return None
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [_as_real(params), _as_real(grads), _as_real(bufs)]  # type: ignore[list-item]
    )
    sq_norms = []
    scalar_mode = not any(isinstance(x, Tensor) for x in (rho, coef, lr))
    for (device_, dtype_), ((dev_params_, dev_grads_, dev_bufs_), _) in grouped.items():
        device, dtype = cast(torch.device, device_), cast(torch.dtype, dtype_)
        dev_params = cast(list[Tensor], dev_params_)
        dev_grads = cast(list[Tensor], dev_grads_)
        dev_bufs = cast(list[Tensor], dev_bufs_)
        if maximize:
            dev_grads = list(torch._foreach_neg(dev_grads))
        if weight_decay:
            if decoupled_weight_decay:
                torch._foreach_mul_(dev_params, _on(1 - lr * weight_decay, device, dtype))
            elif maximize:  # dev_grads is already a copy
                torch._foreach_add_(dev_grads, dev_params, alpha=weight_decay)
            else:
                dev_grads = list(torch._foreach_add(dev_grads, dev_params, alpha=weight_decay))
        if scalar_mode:
            torch._foreach_mul_(dev_bufs, rho)
            torch._foreach_add_(dev_bufs, dev_grads, alpha=-cast(float, coef))
        else:
            scaled = torch._foreach_mul(dev_grads, _on(-coef, device, dtype))
            torch._foreach_mul_(dev_bufs, _on(rho, device, dtype))
            torch._foreach_add_(dev_bufs, scaled)
        torch._foreach_add_(dev_params, dev_bufs)
        if track_temperature:
            norms = torch._foreach_norm(dev_bufs, 2, dtype=_norm_dtype(dev_bufs[0]))
            sq_norms.append(torch.stack(norms).square().sum())
    if not track_temperature:
        return None
    return _total(sq_norms)


def _norm_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _on(x: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """A tensor scalar moved to ``device`` and ``dtype`` (a no-op when it is there already)."""
    return x.to(device=device, dtype=dtype, non_blocking=True) if isinstance(x, Tensor) else x


def _total(values: list[Tensor]) -> Tensor:
    """The sum of 0-d tensors, on the first one's device (groups may span devices)."""
    total = values[0]
    for value in values[1:]:
        total = total + value.to(total.device, non_blocking=True)
    return total
