"""The arithmetic of CoolMomentum's step, for :class:`coolmomentum.torch.CoolMomentum`: one
reference loop over tensors, the multi-tensor (``foreach``) path, and the fused one-pass
routes (the C kernel of :mod:`coolmomentum._fused_cpu`, PyTorch's fused SGD kernel), all of
which must agree. Each update function takes a group's parameters, gradients and momentum
buffers with the step's :class:`Coefficients` and :class:`StepOptions`, updates them in
place and returns ``sum(b**2)`` when the temperature is tracked.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused_cpu

_Key = TypeVar("_Key")


class StepOptions(NamedTuple):
    """A group's options that every implementation of the step takes."""

    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    track_temperature: bool


class Coefficients(NamedTuple):
    """A step's coefficients, as :meth:`CoolMomentum._coefficients` computes them.

    Python values in eager steps. With ``capturable=True`` or under ``torch.compile`` the
    step count is a tensor that is never read on the host, and what depends on it is a
    tensor too.
    """

    rho: float | Tensor
    """``rho_k``: a float, or a 0-d tensor computed from the step count on its device."""
    lr: float | Tensor
    """The group's ``lr``: a float, or a 0-d tensor (an ``lr`` tensor off the CPU, or any
    ``lr`` tensor without host reads)."""
    measured: bool | Tensor
    """Whether this step's temperature is measured (``temperature_every``): a bool when the
    step count is known on the host; else a 0-d 0/1 tensor, and the sum of ``b**2`` is then
    computed on every step and weighted by it."""


UpdateFn = Callable[
    [list[Tensor], list[Tensor], list[Tensor], Coefficients, StepOptions], "Tensor | None"
]


def _choose_update(group: dict[str, Any]) -> UpdateFn:
    """The implementation this group's step runs (looked up by name: tests spy on them)."""
    if group["capturable"] or torch.compiler.is_compiling():
        return _single_tensor_update if group["foreach"] is False else _foreach_update
    if group["fused"]:
        return _fused_update
    if group["fused"] is None and group["foreach"] is None:
        # The default: fused where it was measured faster (the CPU), foreach elsewhere.
        params = group["params"]
        on_cpu = bool(params) and params[0].device.type == "cpu"
        return _fused_update if on_cpu else _foreach_update
    return _single_tensor_update if group["foreach"] is False else _foreach_update


def _single_tensor_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> Tensor | None:
    """The reference loop, one tensor at a time; returns ``sum(b**2)`` when tracking."""
    weight_decay, decoupled_weight_decay, maximize, track_temperature = options
    rho, lr = coefficients.rho, coefficients.lr
    norms = []
    scalar_mode = not isinstance(rho, Tensor) and not isinstance(lr, Tensor)
    damp = (1 + rho) / 2
    for param, grad, buf in zip(params, grads, bufs, strict=True):
        if _low(param):
            _update_in_float32([param], [grad], [buf], coefficients, options)
        else:
            if maximize:
                grad = -grad
            if weight_decay:
                if decoupled_weight_decay:
                    param.mul_(_scalar(1 - lr * weight_decay, param))
                else:
                    grad = grad.add(param, alpha=weight_decay)
            if scalar_mode:
                buf.mul_(rho).add_(grad, alpha=-cast(float, damp))
                param.add_(buf, alpha=cast(float, lr))
            else:
                buf.mul_(_scalar(rho, buf)).addcmul_(grad, _scalar(-damp, buf))
                param.addcmul_(buf, _scalar(lr, buf))
        if track_temperature:
            norms.append(torch.linalg.vector_norm(buf, dtype=_norm_dtype(buf)))
    if not track_temperature or not norms:
        return None
    return _total([n.square() for n in norms])


def _foreach_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> Tensor | None:
    """The multi-tensor path: same arithmetic as :func:`_single_tensor_update`, per device/dtype."""
    weight_decay, decoupled_weight_decay, maximize, track_temperature = options
    rho, lr = coefficients.rho, coefficients.lr
    if not params:
        return None
    sq_norms = []
    damp = (1 + rho) / 2
    scalar_mode = not any(isinstance(x, Tensor) for x in (rho, lr))
    for dev_params, dev_grads, dev_bufs in _by_device_and_dtype(params, grads, bufs):
        p0, b0 = dev_params[0], dev_bufs[0]
        if _low(p0):
            _update_in_float32(dev_params, dev_grads, dev_bufs, coefficients, options)
        else:
            if maximize:
                dev_grads = list(torch._foreach_neg(dev_grads))
            if weight_decay:
                if decoupled_weight_decay:
                    torch._foreach_mul_(dev_params, _scalar(1 - lr * weight_decay, p0))
                elif maximize:  # dev_grads is already a copy
                    torch._foreach_add_(dev_grads, dev_params, alpha=weight_decay)
                else:
                    dev_grads = list(torch._foreach_add(dev_grads, dev_params, alpha=weight_decay))
            if scalar_mode:
                torch._foreach_mul_(dev_bufs, rho)
                torch._foreach_add_(dev_bufs, dev_grads, alpha=-cast(float, damp))
                torch._foreach_add_(dev_params, dev_bufs, alpha=cast(float, lr))
            else:
                n = len(dev_bufs)
                torch._foreach_mul_(dev_bufs, _scalar(rho, b0))
                torch._foreach_addcmul_(dev_bufs, dev_grads, [_scalar(-damp, b0)] * n)
                torch._foreach_addcmul_(dev_params, dev_bufs, [_scalar(lr, b0)] * n)
        if track_temperature:
            sq_norms.append(_sum_of_squares(dev_bufs))
    if not track_temperature:
        return None
    return _total(sq_norms)


def _update_in_float32(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> None:
    """The update of parameters narrower than float32 (bfloat16, float16), in float32.

    As the optax and Keras ports compute it: every coefficient and product in float32, and
    the buffer and the parameter rounded to their dtypes once each, when stored (the
    parameter steps with the stored buffer). PyTorch's kernels on these dtypes round more:
    on the CPU ``add_(b, alpha=lr)`` and ``addcmul_`` round ``lr`` (or ``lr * b``) to
    bfloat16; on CUDA a 0-d float32 tensor multiplying a bfloat16 one is cast to bfloat16;
    and ``mul_`` then ``add_`` rounds the buffer twice. Every product is a separate
    multiplication, never a fused multiply-add, so that each path rounds alike. The tensors
    share a device, and the buffers a dtype.
    """
    weight_decay, decoupled_weight_decay, maximize, _ = options
    rho, lr = coefficients.rho, coefficients.lr
    like = params[0]
    new_params = [p.float() for p in params]  # copies
    g = [t.float() for t in grads]  # copies
    if maximize:
        torch._foreach_neg_(g)
    if weight_decay and not decoupled_weight_decay:
        torch._foreach_add_(g, torch._foreach_mul(new_params, weight_decay))
    torch._foreach_mul_(g, _scalar((1 + rho) / 2, like))
    # Copies, or the buffers themselves where they are kept in float32 (state_dtype).
    new_bufs = [b.float() for b in bufs]
    torch._foreach_mul_(new_bufs, _scalar(rho, like))
    torch._foreach_sub_(new_bufs, g)
    if _low(bufs[0]):
        torch._foreach_copy_(bufs, new_bufs)
    velocity = torch._foreach_mul([b.float() for b in bufs], _scalar(lr, like))
    if weight_decay and decoupled_weight_decay:
        torch._foreach_mul_(new_params, _scalar(1 - lr * weight_decay, like))
    torch._foreach_add_(new_params, velocity)
    torch._foreach_copy_(params, new_params)


class _Route(enum.Enum):
    """The kernel that runs a tensor of the fused step."""

    C_KERNEL = enum.auto()  # :mod:`coolmomentum._fused_cpu`: one pass, sums b**2 in it
    FUSED_SGD = enum.auto()  # PyTorch's fused SGD kernel, torch._fused_sgd_
    FOREACH = enum.auto()  # the multi-tensor path, for what neither kernel takes


def _route(param: Tensor, grad: Tensor, buf: Tensor, rho: float, c_kernel: bool) -> _Route:
    """The kernel for one tensor of the fused step; ``c_kernel``: whether the C kernel can run.

    The layout rule is per tensor, so tensors of one device and dtype may take different
    routes.
    """
    # Both kernels keep the buffer in the parameter's dtype and walk the three tensors'
    # memory side by side.
    if buf.dtype != param.dtype or not _fused_cpu.dense_alike(param, grad, buf):
        return _Route.FOREACH
    # Parameters narrower than float32 run the foreach path, which computes their step in
    # float32 (see _update_in_float32). The C kernel is built for float32 and float64 only;
    # PyTorch's fused SGD kernel steps the parameter with the buffer before it is rounded,
    # and on the CPU (torch 2.13) computes wrong bfloat16 and float16 buffers in tensors of
    # 16 or more elements.
    if _low(param):
        return _Route.FOREACH
    if param.is_cpu and c_kernel:
        return _Route.C_KERNEL
    # PyTorch's kernel keeps no buffer at momentum 0 (see _fused_sgd_update).
    return _Route.FUSED_SGD if rho != 0 else _Route.FOREACH


def _fused_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> Tensor | None:
    """One pass over each tensor: the C kernel on the CPU, else PyTorch's fused SGD kernel.

    Tensors that neither kernel takes run the foreach path (see :func:`_route`).
    """
    # The fused step runs in eager mode only (see _choose_update): rho is a Python float.
    rho = cast(float, coefficients.rho)
    # The C kernel takes lr as a number: an lr tensor off the CPU would need a host read.
    c_kernel = not isinstance(coefficients.lr, Tensor) and _fused_cpu.library() is not None
    buckets = _bucketed(params, grads, bufs, lambda p, g, b: _route(p, g, b, rho, c_kernel))
    sq_sums = []
    for route, lists in buckets.items():
        sq = _update_of(route)(*lists, coefficients, options)
        if sq is not None:
            sq_sums.append(sq)
    return _total(sq_sums) if options.track_temperature and sq_sums else None


def _update_of(route: _Route) -> UpdateFn:
    """The function that runs ``route`` (looked up when called: tests spy on them)."""
    if route is _Route.C_KERNEL:
        return _c_kernel_update
    if route is _Route.FUSED_SGD:
        return _fused_sgd_update
    return _foreach_update


def _c_kernel_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> Tensor | None:
    """The step through the C kernel, one call per dtype (CPU tensors, see :func:`_route`)."""
    rho, lr = cast(float, coefficients.rho), coefficients.lr
    sq_sums = []
    for lists in _bucketed(params, grads, bufs, lambda p, g, b: p.dtype).values():
        sq = _fused_cpu.step(
            *lists,
            rho,
            cast(float, lr),
            options.weight_decay,
            options.decoupled_weight_decay,
            options.maximize,
            options.track_temperature,
        )
        if sq is not None:
            sq_sums.append(sq)
    return _total(sq_sums) if sq_sums else None


def _fused_sgd_update(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    coefficients: Coefficients,
    options: StepOptions,
) -> Tensor | None:
    """CoolMomentum's step through PyTorch's fused SGD kernel, ``torch._fused_sgd_``.

    With ``buf = b`` it computes CoolMomentum's step when given momentum ``rho``, dampening
    ``1 + (1 + rho) / 2`` and learning rate ``-lr``: its buffer update is
    ``buf = momentum * buf + (1 - dampening) * g``, then ``x -= lr * buf``. The buffers start
    at zero, so the first step needs no special case. (Its ``momentum = 0`` variant keeps no
    buffer: the caller sends cooled steps elsewhere.)
    """
    weight_decay, decoupled_weight_decay, maximize, track_temperature = options
    rho, lr = cast(float, coefficients.rho), coefficients.lr  # eager only: rho is a float
    sq_norms = []
    for dev_params, dev_grads, dev_bufs in _by_device_and_dtype(params, grads, bufs):
        if weight_decay and decoupled_weight_decay:
            torch._foreach_mul_(dev_params, _scalar(1 - lr * weight_decay, dev_params[0]))
        torch._fused_sgd_(
            dev_params,
            dev_grads,
            dev_bufs,
            weight_decay=0.0 if decoupled_weight_decay else weight_decay,
            momentum=rho,
            lr=_scalar(-lr, dev_params[0]) if isinstance(lr, Tensor) else -lr,
            dampening=1.0 + (1.0 + rho) / 2.0,
            nesterov=False,
            maximize=maximize,
            is_first_step=False,
        )
        if track_temperature:
            sq_norms.append(_sum_of_squares(dev_bufs))
    if not track_temperature or not sq_norms:
        return None
    return _total(sq_norms)


def _bucketed(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    key: Callable[[Tensor, Tensor, Tensor], _Key],
) -> dict[_Key, tuple[list[Tensor], list[Tensor], list[Tensor]]]:
    """The triples grouped by ``key(param, grad, buf)``, in order of first appearance."""
    buckets: dict[_Key, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    for p, g, b in zip(params, grads, bufs, strict=True):
        k = key(p, g, b)
        lists = buckets.get(k)
        if lists is None:
            lists = buckets[k] = ([], [], [])
        lists[0].append(p)
        lists[1].append(g)
        lists[2].append(b)
    return buckets


def _by_device_and_dtype(
    params: list[Tensor], grads: list[Tensor], bufs: list[Tensor]
) -> list[tuple[list[Tensor], list[Tensor], list[Tensor]]]:
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs])  # type: ignore[list-item]
    return [cast(tuple[list[Tensor], list[Tensor], list[Tensor]], tuple(lists))
            for lists, _ in grouped.values()]  # fmt: skip


def _sum_of_squares(tensors: list[Tensor]) -> Tensor:
    norms = torch._foreach_norm(tensors, 2, dtype=_norm_dtype(tensors[0]))
    return torch.stack(norms).square().sum()


def _norm_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _low(t: Tensor) -> bool:
    """Whether ``t`` is of a dtype narrower than float32."""
    return _norm_dtype(t) != t.dtype


def _scalar(x: Any, like: Tensor) -> Tensor:
    """``x`` as a 0-d tensor on ``like``'s device, in at least float32 (a no-op if it is one).

    Coefficients keep their precision next to low-precision tensors: ``rho = 0.99`` cast to
    bfloat16 would be 0.98828, ``1 - rho`` off by 17 %.
    """
    dtype = _norm_dtype(like)
    if isinstance(x, Tensor):
        return x.to(device=like.device, dtype=dtype, non_blocking=True)
    return torch.full((), x, dtype=dtype, device=like.device)


def _total(values: list[Tensor]) -> Tensor:
    """The sum of 0-d tensors, on the first one's device (groups may span devices)."""
    total = values[0]
    for value in values[1:]:
        total = total + value.to(total.device, non_blocking=True)
    return total
