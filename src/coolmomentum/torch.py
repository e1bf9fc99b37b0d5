"""CoolMomentum as a ``torch.optim.Optimizer``.

Per parameter tensor, at optimizer step ``k`` (counted from 0), with ``b`` the momentum
buffer::

    b_k     = rho_k * b_{k-1} - (1 + rho_k) / 2 * g_k      (b_{-1} = 0)
    x_{k+1} = x_k + lr_k * b_k

with ``rho_k`` from :mod:`coolmomentum.schedules`. The parameter change is the velocity
``v_k = lr_k * b_k``; at a constant ``lr`` this is the paper's rule
``v_k = rho_k * v_{k-1} - lr * (1 + rho_k) / 2 * g_k``. When a scheduler changes ``lr``, the
velocity changes with it (``v`` is rescaled by ``lr_k / lr_{k-1}``), as SGD's does: at a
constant ``rho`` this is exactly ``torch.optim.SGD(lr=lr * (1 + rho) / 2, momentum=rho)``
under any learning-rate schedule.

Three implementations of the same step: a single-tensor reference loop, multi-tensor
(``foreach``) kernels, and a fused one-pass kernel that also sums ``b**2`` for the
temperature in the same loop (:mod:`coolmomentum._fused_cpu` on the CPU; PyTorch's fused SGD
kernel, under the change of variables above, elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from . import _stats
from ._numbers import check_number, schedule_float
from ._torch_step import Coefficients, StepOptions, _choose_update, _scalar
from .schedules import RhoFn, Schedule, resolve_schedule

__all__ = ["CoolMomentum"]

_SCHEDULE_KEYS = ("rho_0", "total_steps", "alpha", "schedule", "hot_steps")
# Per-group tensors that live in ``param_groups`` (and so in ``state_dict()["param_groups"]``):
# the schedule position and the temperature window.
_GROUP_STATE = ("step", "temperature_start", "temperature_sum", "temperature_count")
_STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Parameters of these exact types are plain tensors: no DTensor shard to take (a cheap test
# per parameter and step).
_PLAIN_TENSORS = frozenset({Tensor, torch.nn.Parameter})
_Key = TypeVar("_Key")


class CoolMomentum(Optimizer):
    r"""Momentum SGD from Langevin dynamics whose momentum coefficient ``rho`` is annealed to 0.

    Args:
        params: parameters or param groups; every argument below can differ per group, and
            each group follows its own schedule.
        lr: the integration step ``dt**2`` (a float or a one-element tensor). The effective
            SGD step is ``lr * (1 + rho) / 2``: ``lr`` at the start, ``lr / 2`` when cooled.
            A learning-rate scheduler may change it between steps: the velocity follows, as
            SGD's does (see the module docstring).
        rho_0: initial momentum coefficient, in ``[0, 1)``.
        total_steps: ``S``, the number of cooling steps; after ``hot_steps + S`` steps
            ``rho`` is 0 for good. Needed by every schedule but ``"constant"`` and callables.
        alpha: the paper's cooling rate, instead of ``total_steps`` for the exponential
            schedule: ``S = ln(1 - rho_0) / ln(alpha)``; ``alpha = 1`` means no cooling.
        schedule: ``"cosine-temperature"`` (the default), ``"linear-temperature"``,
            ``"exponential"`` (the paper's Eq. 20; the default when ``alpha`` is given),
            ``"exponential-temperature"``,
            ``"constant"``, or a callable ``step -> rho``. A callable
            gets an ``int`` in eager mode and a 0-d tensor under ``torch.compile`` or with
            ``capturable=True`` (use torch ops then). It is not saved by ``state_dict()``:
            pass the same callable again when you load.
        hot_steps: ``H``, steps held at ``rho_0`` before cooling starts.
        weight_decay: L2 penalty added to the gradient (``g + weight_decay * x``), as in the
            paper's code; with ``decoupled_weight_decay=True`` the weights are shrunk instead
            (``x *= 1 - lr * weight_decay``), as AdamW does.
        maximize: ascend the objective instead of descending it.
        foreach: ``True`` for the multi-tensor kernels, ``False`` for the single-tensor
            reference loop. Default: the fused step for CPU parameters, foreach elsewhere.
        fused: ``True`` for the one-pass step (CPU, CUDA and the other devices with PyTorch's
            fused kernels; not with ``foreach=True``, ``capturable=True`` or a
            ``state_dtype`` wider than a parameter's dtype). On the CPU it is a small C
            kernel built on first use with the system's C compiler (well under a second;
            cached); without a compiler, PyTorch's fused SGD kernel runs it. Eager steps only:
            under ``torch.compile`` the multi-tensor arithmetic is compiled instead.
        capturable: keep the schedule position on the parameters' device and compute ``rho``
            there, without reading anything back to the host, so that ``step()`` can be
            captured in a CUDA graph.
        track_temperature: accumulate the temperature reported by :meth:`stats` (on the
            device, without synchronizing). The fused CPU kernel sums it in the same pass, at
            no extra memory traffic; the other paths read the buffers once more.
        temperature_every: measure the temperature on every this many steps only (steps
            ``k`` with ``k % temperature_every == 0``): the window's temperature is then the
            mean over its measured steps, an estimate of the mean over all its steps.
            Eager steps skip the measurement on the other steps, and with it the extra read
            of the buffers (foreach and single-tensor paths, PyTorch's fused SGD kernel).
            With ``capturable=True`` or under ``torch.compile`` the step count is a tensor
            that ``step()`` never reads back (that would synchronize with the device, or
            break the graph), so the sum is computed on every step and kept on the measured
            ones: the same temperature, without the saving. Default 1: every step, exact.
        noise_std: standard deviation of Gaussian noise added to every real gradient element
            before the update: the random force of Langevin dynamics, for full-batch
            (deterministic) objectives that have no minibatch noise. Default 0.
        state_dtype: keep the momentum buffers in at least this floating dtype (e.g.
            ``torch.float32`` for ``bfloat16`` parameters, so that small updates are not lost
            in the buffer); default: each parameter's dtype. Parameters narrower than
            float32 are stepped in float32 on every path (the foreach path, with
            ``fused=True`` too), their buffer and value rounded once per step each, when
            stored, as the optax and Keras ports do.
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

    The schedule arguments of a group are validated when the group is added (and when a
    ``state_dict`` is loaded); a group whose schedule arguments are edited later is
    validated again at its next step.

    The step count, the schedule position and the temperature window are saved by
    ``state_dict()``; a run resumed from it continues exactly, and the saved dict loads with
    ``torch.load(..., weights_only=True)``. The schedule counts calls to ``step()``, including
    those in which a group had no gradients; a step that ``torch.amp.GradScaler`` skips (its
    gradients overflowed) does not call ``step()`` and so does not advance the schedule.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-2,
        rho_0: float = 0.99,
        total_steps: float | None = None,
        *,
        alpha: float | None = None,
        schedule: str | RhoFn | None = None,
        hot_steps: int = 0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        track_temperature: bool = True,
        temperature_every: int = 1,
        noise_std: float = 0.0,
        state_dtype: torch.dtype | None = None,
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
            fused=fused,
            capturable=capturable,
            track_temperature=track_temperature,
            temperature_every=temperature_every,
            noise_std=noise_std,
            state_dtype=state_dtype,
            # A read-only mirror of rho for tools that look for SGD's key (e.g. Lightning's
            # LearningRateMonitor(log_momentum=True) checks that the defaults name it); each
            # group holds its own value, set in add_param_group and after every step.
            momentum=None,
        )
        self._generators: dict[str, torch.Generator] = {}
        if generator is not None:
            self._generators[str(generator.device)] = generator
        # Validated schedules by their arguments: built once per group, looked up per step.
        self._schedules: dict[tuple[Any, ...], Schedule] = {}
        # Element counts of the groups' parameter lists, by id (see _element_count).
        self._element_counts: dict[int, tuple[list[Tensor], int, int]] = {}
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

    def _check_group(self, group: dict[str, Any]) -> None:
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
        every = group["temperature_every"]
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"temperature_every must be an integer >= 1, got {every!r}")
        # No schedule named: Eq. 20 where the group gives its rate alpha, else the default.
        group["schedule"] = resolve_schedule(group["schedule"], group["alpha"])
        self._schedule(group)  # raises ValueError naming the bad schedule argument
        for key in _GROUP_STATE:
            if key in group and not isinstance(group[key], Tensor):
                raise ValueError(f"param group key {key!r} is reserved for the optimizer's state")
        state_dtype = group["state_dtype"]
        if state_dtype is not None and state_dtype not in _STATE_DTYPES:
            names = ", ".join(map(str, _STATE_DTYPES))
            raise ValueError(
                f"state_dtype must be None or a floating dtype ({names}), got {state_dtype!r}"
            )
        if group["fused"]:
            _check_fused(group)

    def _schedule(self, group: dict[str, Any]) -> Schedule:
        """The group's validated schedule, built the first time its arguments are seen."""
        args = tuple(group[key] for key in _SCHEDULE_KEYS)
        try:
            schedule = self._schedules.get(args)
        except TypeError:  # an unhashable callable schedule: nothing to look up
            return Schedule.create(*args)
        if schedule is None:
            schedule = Schedule.create(*args)
            self._schedules[args] = schedule
        return schedule

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

    def _generator_states(self) -> dict[str, Tensor]:
        """Each noise generator's state, by device."""
        return {device: g.get_state() for device, g in self._generators.items()}

    def _restore_generators(self, states: dict[str, Tensor]) -> None:
        """Set the noise generators to ``states`` (as :meth:`_generator_states` gives them)."""
        for device, rng_state in states.items():
            self._generator(torch.device(device)).set_state(rng_state)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A callable schedule is saved as None: the one this optimizer was built with stays.
        callables = [g["schedule"] for g in self.param_groups]
        for saved, mine in zip(state_dict["param_groups"], callables, strict=False):
            if saved.get("schedule") is None and not callable(mine):
                raise ValueError(
                    "this state_dict was saved with a callable schedule, which is not saved; "
                    "construct the optimizer with the same callable (schedule=...), then load"
                )
        # torch.optim casts every floating state tensor to its parameter's dtype; buffers kept
        # wider than their parameter (state_dtype) are taken from the saved dict instead.
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        saved_buffers = {
            p: state_dict["state"][i]["momentum_buffer"]
            for i, p in zip(saved_ids, (p for g in self.param_groups for p in g["params"]))
            if "momentum_buffer" in state_dict["state"].get(i, {})
        }
        generator_states = state_dict.get("noise_generators", {})
        super().load_state_dict(state_dict)
        self._restore_generators(generator_states)
        for group, mine in zip(self.param_groups, callables, strict=False):
            if group["schedule"] is None:
                group["schedule"] = mine
            self._check_group(group)
            self._init_group_state(group)
            group["momentum"] = self._latest_rho(group)
            for p in group["params"]:
                wanted = _buffer_dtype(p, group)
                if p in saved_buffers and wanted != p.dtype:
                    self.state[p]["momentum_buffer"] = saved_buffers[p].to(p.device, wanted)

    def __getstate__(self) -> dict[str, Any]:
        # torch.optim pickles the defaults, state and groups alone; the noise generators'
        # positions go too, so that a copy (copy.deepcopy, pickle) draws the same noise.
        state = super().__getstate__()
        state["noise_generators"] = self._generator_states()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also called by torch.optim's load_state_dict with the state and groups alone: the
        # generators (a caller's own among them) and caches are kept then.
        state = dict(state)
        generator_states = state.pop("noise_generators", None)
        super().__setstate__(state)
        if generator_states is not None:  # a copy: copy.deepcopy or pickle
            self._generators = {}
            self._restore_generators(generator_states)
        self.__dict__.setdefault("_schedules", {})
        self.__dict__.setdefault("_element_counts", {})

    def _latest_rho(self, group: dict[str, Any]) -> float:
        """The ``rho`` of the group's latest step (``rho_0`` before the first), as a float."""
        step = int(group["step"].item()) if "step" in group else 0
        return float(self._schedule(group)(max(step - 1, 0)))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for group in state["param_groups"]:
            if callable(group["schedule"]):
                group["schedule"] = None
        if self._generators:
            state["noise_generators"] = self._generator_states()
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
            params, grads, bufs = self._gather(group)
            if group["noise_std"]:
                # Drawn on the real view, tensor by tensor in parameter order, so that complex
                # parameters behave as pairs of reals and every path sees the same noise.
                std = group["noise_std"]
                grads = [
                    torch.randn_like(g, generator=self._generator(g.device)).mul_(std).add_(g)
                    for g in grads
                ]
            step = group["step"]
            coefficients = self._coefficients(group, step)
            options = StepOptions(
                group["weight_decay"],
                group["decoupled_weight_decay"],
                group["maximize"],
                track_temperature=coefficients.measured is not False,
            )
            sq_sum = _choose_update(group)(params, grads, bufs, coefficients, options)
            if sq_sum is not None:
                # Sums of v**2 = (lr b)**2 and of element counts: their ratio is the mean, on
                # one rank or, after summing over ranks, over every shard.
                acc = group["temperature_sum"]
                count: int | Tensor = self._element_count(group, params)
                lr = coefficients.lr
                lr_sq = _scalar(lr * lr, acc) if isinstance(lr, Tensor) else lr * lr
                sq_sum = sq_sum.to(device=acc.device, dtype=acc.dtype) * lr_sq
                measured = coefficients.measured
                if isinstance(measured, Tensor):  # computed on every step, kept on some
                    sq_sum, count = sq_sum * measured, measured * count
                acc.add_(sq_sum)
                group["temperature_count"].add_(count)
            step.add_(1)
            group["momentum"] = coefficients.rho
        return loss

    def _element_count(self, group: dict[str, Any], params: list[Tensor]) -> int:
        """The number of elements of ``params``, the group's tensors that have gradients.

        When every parameter of the group has one (the usual case), the count is the
        group's, counted once per parameter list rather than in a Python loop over its
        tensors at every step. A list is known by its identity and its length: a group added
        by ``add_param_group`` is counted anew, and so is a list that grows or shrinks in
        place. Under ``torch.compile`` the sum is a constant of the traced graph.
        """
        group_params = group["params"]
        if len(params) != len(group_params) or torch.compiler.is_compiling():
            return sum(t.numel() for t in params)
        cached = self._element_counts.get(id(group_params))
        if cached is not None and cached[1] == len(group_params):
            return cached[2]
        count = sum(t.numel() for t in params)
        # Each entry holds its list, so that no other list can take its id; entries of lists
        # that no group holds any more are dropped.
        live = {id(g["params"]) for g in self.param_groups}
        self._element_counts = {k: v for k, v in self._element_counts.items() if k in live}
        self._element_counts[id(group_params)] = (group_params, len(group_params), count)
        return count

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Real views of the parameters that have gradients, their gradients and buffers."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        bufs: list[Tensor] = []
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    "CoolMomentum does not support sparse gradients; use a dense "
                    "embedding (sparse=False) or torch.optim.SparseAdam for it"
                )
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(
                    p, dtype=_buffer_dtype(p, group), memory_format=torch.preserve_format
                )
            if type(p) not in _PLAIN_TENSORS or p.is_complex():
                # DTensor (FSDP2, tensor parallel) shards are updated in place, locally;
                # complex tensors as pairs of reals.
                p, grad, buf = (_as_real(_local(t)) for t in (p, grad, buf))
            params.append(p)
            grads.append(grad)
            bufs.append(buf)
        return params, grads, bufs

    def _coefficients(self, group: dict[str, Any], step: Tensor) -> Coefficients:
        """``rho_k``, ``lr`` and whether this step's temperature is measured.

        Python values in eager mode; without host reads (capturable, compiled), ``rho`` is
        a 0-d tensor, and so is the measurement flag when only some steps are measured:
        deciding it on the host would read the step count back (a device synchronization,
        or a graph break under ``torch.compile``).
        """
        schedule = self._schedule(group)
        lr = group["lr"]
        every = group["temperature_every"]
        if group["capturable"] or torch.compiler.is_compiling():
            real = getattr(torch, schedule_float("torch", step.device.type))
            rho = schedule(step.to(real), ops=torch)
            measured = group["track_temperature"] and (every == 1 or step % every == 0)
            return Coefficients(rho, lr.reshape(()) if isinstance(lr, Tensor) else lr, measured)
        k = int(step.item())  # a CPU tensor: no device synchronization
        rho = schedule(k)
        if isinstance(rho, Tensor):  # a callable schedule may return a tensor
            rho = rho.item()
        if isinstance(lr, Tensor):
            # Any one-element shape; a CPU value is read without synchronizing a device.
            lr = lr.item() if lr.device.type == "cpu" else lr.reshape(())
        return Coefficients(rho, lr, group["track_temperature"] and k % every == 0)

    @torch.no_grad()
    def stats(
        self, reset: bool = True, *, all_reduce: bool = False, process_group: Any = None
    ) -> list[dict[str, Any]]:
        """The statistics of each param group, one dict per group (the keys of every port).

        Keys: ``step`` (steps taken), ``rho`` (of the latest step; ``rho_0`` before the
        first), ``lr``, ``temperature`` (the mean of ``v_k**2`` over the group's elements and
        the steps since the previous call with ``reset=True``; ``None`` when none were taken
        or tracking is off), ``temperature_sum`` and ``temperature_count`` (the sum of
        ``v_k**2`` and the number of element-steps it covers: add them up to combine
        windows, as :meth:`total_stats` does) and ``temperature_steps``. This call
        synchronizes with the device; ``step()`` never does.

        With ``all_reduce=True`` (a collective: every rank of ``process_group``, default the
        world, must call it) the sums are over the elements of every rank: over all shards
        with FSDP2 or ``ZeroRedundancyOptimizer``; with plain data parallelism, the world
        size times one rank's, and the same temperature.

        With FSDP2 or ``ZeroRedundancyOptimizer`` each rank's window holds sums over its own
        shards, and a sharded (DCP) or consolidated (ZeRO) checkpoint keeps one rank's copy
        of the group state: checkpoint right after a call with ``reset=True`` to carry the
        window exactly.
        """
        if all_reduce and not (
            torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            raise ValueError(
                "stats(all_reduce=True) sums over the ranks of a process group; "
                "call torch.distributed.init_process_group() first"
            )
        out = []
        for group in self.param_groups:
            if "step" not in group:
                self._init_group_state(group)
            step = int(group["step"].item())
            window = step - int(group["temperature_start"].item())
            total_t = group["temperature_sum"]
            sums = torch.cat([total_t, group["temperature_count"].to(total_t.dtype).reshape(1)])
            if all_reduce:
                torch.distributed.all_reduce(sums, group=process_group)
            total, count = sums.tolist()
            if not (group["track_temperature"] and window > 0):
                total, count = 0.0, 0
            stats = _stats.window(step, self._latest_rho(group), total, int(count), window)
            out.append({**stats, "lr": float(group["lr"])})
            if reset:
                group["temperature_sum"].zero_()
                group["temperature_count"].zero_()
                group["temperature_start"].copy_(group["step"])
        return out

    def total_stats(
        self, reset: bool = True, *, all_reduce: bool = False, process_group: Any = None
    ) -> dict[str, Any]:
        """The statistics of the whole optimizer: :meth:`stats` combined over the groups.

        ``temperature`` is the element-weighted mean over every group's elements (the groups'
        ``temperature_sum`` and ``temperature_count`` added up); ``step`` and
        ``temperature_steps`` are the largest over the groups; ``rho`` is the groups' common
        ``rho``, ``None`` when they differ. The keys are those of the optax and Keras ports'
        statistics. Arguments as for :meth:`stats`.
        """
        per_group = self.stats(reset, all_reduce=all_reduce, process_group=process_group)
        return _stats.combine([{k: s[k] for k in _stats.KEYS} for s in per_group])


def _check_fused(group: dict[str, Any]) -> None:
    """Refuse, naming the way out, what the fused step cannot do."""
    if group["foreach"]:
        raise ValueError("fused=True and foreach=True cannot be combined; choose one")
    if group["capturable"]:
        raise ValueError(
            "fused=True reads rho on the host; for a capturable step use capturable=True "
            "with the default (foreach) path"
        )
    supported = _get_fused_kernels_supported_devices()
    for p in group["params"]:
        if p.device.type not in supported:
            raise ValueError(
                f"fused=True needs parameters on a device with fused kernels ({supported}), "
                f"got {p.device.type}; use foreach=True"
            )
        if _buffer_dtype(p, group) != p.dtype:
            raise ValueError(
                f"fused=True keeps each momentum buffer in its parameter's dtype; "
                f"state_dtype={group['state_dtype']} with {p.dtype} parameters needs "
                f"foreach=True"
            )


def _buffer_dtype(p: Tensor, group: dict[str, Any]) -> torch.dtype:
    state_dtype = group["state_dtype"]
    return p.dtype if state_dtype is None else torch.promote_types(p.dtype, state_dtype)


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (a view: in-place updates reach the DTensor); else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _as_real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t
