"""The SGD that training uses: PyTorch's fused kernel where it can run, safe for a supernet.

PyTorch's fused SGD updates every parameter in one kernel instead of a Python loop of small
operations (about 4 ms of a 107-ms step for the smallest OFA subnet on the 2-core host,
``bench/train_throughput.py``).  It assumes that either every parameter it is handed has a
momentum buffer or none has; a supernet breaks that, because a parameter that no subnet
has used yet (the kernel transforms of elastic kernels before the kernel phase, a width's
private BN) has no buffer when it first gets a gradient beside ones that have.  ``SGD``
gives such a parameter a zero buffer just before its first update, which with no dampening
is exactly what plain SGD computes (its first step sets the buffer to the gradient, as
``0 * momentum + gradient`` does).
"""

from __future__ import annotations

import torch


def fused_ok(params: list[torch.Tensor]) -> bool:
    """True when PyTorch's fused SGD can update ``params``: floating point, all on one CPU
    or CUDA device."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.is_floating_point() for p in params))


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` (fused where ``fused_ok``) that primes missing momentum buffers."""

    def __init__(self, groups, lr: float, momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0):
        params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
        # a dampened first step differs from a zero-primed one: keep PyTorch's loop there
        fused = fused_ok(params) and momentum != 0 and dampening == 0
        super().__init__(groups, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening,
                         fused=True if fused else None)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if not group.get("fused") or group["momentum"] == 0:
                continue
            for p in group["params"]:
                if p.grad is not None and self.state[p].get("momentum_buffer") is None:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return super().step(closure)
