"""Where training and evaluation run: device, mixed precision and memory format.

- ``resolve_device("auto"|"cpu"|"cuda"|"cuda:N")``: ``auto`` is CUDA when a GPU is
  available, else the CPU; asking for a GPU that is not there is a ``ValueError`` naming it.
- ``resolve_amp("auto"|"bf16"|"fp16"|"off", device)``: ``auto`` is bf16 on CUDA and off on
  the CPU (CPU autocast is slower than fp32 for these convolutions); fp16 needs CUDA and
  comes with a gradient scaler (``grad_scaler``).
- ``autocast(device, amp)``: the context a forward pass runs in.
- ``resolve_allocator("auto"|"keep"|"system", device)`` / ``apply_allocator``: on the CPU,
  glibc keeps freed memory for the next training step instead of returning it to the kernel.
- ``process_threads(threads)``: a run's thread count for this process, at most the cores it
  gets when ``torchrun`` starts several processes on one machine.
- Channels-last (NHWC) is the default memory format for the supernet and its batches: on
  this project's 2-core CPU it trains the largest Fashion-MNIST subnet about 3x faster
  than NCHW (README, "Training speed"), and cuDNN prefers it for mixed precision.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform

import torch

from .cliargs import ALLOCATOR_MODES, AMP_MODES, CUDNN_MODES, DEVICES_HELP, allocator_mode, usable_cores  # noqa: F401 (re-exported)


def resolve_device(spec: str = "auto") -> torch.device:
    """The ``torch.device`` for ``spec``; raises ValueError for an unknown or absent device."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device is available here (use --device cpu or auto)")
        index = 0 if spec == "cuda" else spec.partition(":")[2]
        try:
            index = int(index)
        except ValueError:
            raise ValueError(f"--device {spec}: expected {DEVICES_HELP}") from None
        if not 0 <= index < torch.cuda.device_count():
            raise ValueError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    raise ValueError(f"--device {spec!r}: expected {DEVICES_HELP}")


def resolve_amp(spec: str, device: torch.device) -> str:
    """``bf16``, ``fp16`` or ``off`` for ``spec`` on ``device``; raises ValueError."""
    spec = (spec or "auto").strip().lower()
    if spec not in AMP_MODES:
        raise ValueError(f"--amp {spec!r}: expected one of {', '.join(AMP_MODES)}")
    if spec == "auto":
        return "bf16" if device.type == "cuda" else "off"
    if spec == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (use bf16 or off on the CPU)")
    return spec


def resolve_cudnn(spec: str, device: torch.device) -> str:
    """``on``, ``off`` or ``no-depthwise`` for ``spec`` (``--cudnn``) on ``device``; the CPU
    has no cuDNN and always gets ``on`` (nothing to switch).  ``auto`` is ``no-depthwise`` on
    CUDA: on an H200 (cuDNN 9.19, bench/gpu_warmup.py, Fashion-MNIST space, batch 64, bf16,
    channels-last) the first training step of each new subnet shape took 5.3 s with cuDNN's
    depthwise convolutions and 46 ms without them, for the same steady step (24.0 against
    24.7 ms); cuDNN off everywhere ran 4.5x slower steady steps.  Raises ValueError for an
    unknown mode."""
    spec = (spec or "auto").strip().lower()
    if spec not in CUDNN_MODES:
        raise ValueError(f"--cudnn {spec!r}: expected one of {', '.join(CUDNN_MODES)}")
    if device.type != "cuda":
        return "on"
    return "no-depthwise" if spec == "auto" else spec


def apply_cudnn(mode: str) -> None:
    """Sets the process's cuDNN use for ``mode`` (``resolve_cudnn``): ``off`` disables cuDNN,
    ``no-depthwise`` keeps it for every layer but the supernet's depthwise convolutions,
    which then run PyTorch's own kernels (no per-shape plan to compile)."""
    from .dynamic import set_cudnn_depthwise

    torch.backends.cudnn.enabled = mode != "off"
    set_cudnn_depthwise(mode == "on")


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
# (HEAP_MAX_SIZE / 2); mallopt takes a C int, so the trim threshold is at most 2 GiB - 1.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 32 * 1024 * 1024
KEEP_TRIM_THRESHOLD = 2**31 - 1
_ALLOCATOR_APPLIED: str | None = None


def _glibc() -> "ctypes.CDLL | None":
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def resolve_allocator(spec: str | None, device: torch.device) -> str:
    """``keep`` or ``system`` for ``spec`` (``--allocator``) on ``device``.

    ``keep`` tells glibc's malloc to keep freed memory for the next allocation instead of
    handing it back to the kernel: a training step allocates and frees the same large
    activation buffers every step, and with glibc's defaults (blocks over a moving mmap
    threshold are mapped and unmapped each time, and a heap top over 2x that threshold is
    trimmed) every step pays a page fault per 4 KiB of those buffers again.  Measured on the
    2-core host (README, "Memory on the CPU"): the largest Fashion-MNIST subnet's step 17-24%
    faster, a sandwich step 8-18%, the largest OFA subnet at 160 px 18%; the process keeps
    its peak memory instead of returning it between steps.  ``auto`` is ``keep`` on the CPU
    with glibc and ``system`` otherwise (a GPU's tensors live in PyTorch's caching allocator
    already); ``keep`` where glibc is absent is a ValueError."""
    spec = allocator_mode(spec)
    if spec == "auto":
        return "keep" if device.type == "cpu" and _glibc() is not None else "system"
    if spec == "keep" and _glibc() is None:
        raise ValueError(f"--allocator keep needs glibc's malloc (this is {platform.system()} "
                         f"{'-'.join(platform.libc_ver()) or 'without glibc'}); use auto or system")
    return spec


def apply_allocator(mode: str) -> str:
    """Applies ``mode`` (``resolve_allocator``) to this process and returns it.  ``keep``
    sets glibc's mmap threshold to 32 MiB (blocks below it come from the heap and are reused)
    and its trim threshold to 2 GiB (the heap keeps up to that much freed memory); it lasts
    for the process.  ``system`` changes nothing (a process that has kept memory keeps doing
    so)."""
    global _ALLOCATOR_APPLIED
    if mode == "keep" and _ALLOCATOR_APPLIED != "keep":
        libc = _glibc()
        if libc is None or not (libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD)
                                and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)):
            raise ValueError("--allocator keep: glibc's mallopt refused the thresholds")
        _ALLOCATOR_APPLIED = "keep"
    return mode


def amp_dtype(amp: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def autocast(device: torch.device, amp: str):
    """The autocast context for ``amp`` (a no-op context when off)."""
    dtype = amp_dtype(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> "torch.amp.GradScaler | None":
    """A gradient scaler for fp16 (bf16 and fp32 need none)."""
    if amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """``x`` on ``device`` (pinned, non-blocking from the CPU to a GPU), NHWC when asked."""
    if x.device != device:
        if device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(device, non_blocking=True)
        else:
            x = x.to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def place(module: torch.nn.Module, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """``module`` on ``device``, its 4-d weights NHWC when asked (the one way the supernet,
    the teacher and evaluated subnets are placed)."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last) if channels_last else module


def process_threads(threads: int | None) -> int | None:
    """A run's torch thread count for this process: at most its share of the cores when
    ``torchrun`` starts ``LOCAL_WORLD_SIZE`` processes on this machine, at least 1; None stays
    None (torch's default, which ``torchrun`` sets to 1 a process).  A preset's threads are
    what it was measured with on one process; two ranks of 2 threads on 2 cores each spin a
    second OpenMP thread against the other rank's work, and took the ``tiny`` preset to step
    150 in 493 s against 93 s with one thread each (README, "The once-for-all supernet")."""
    if threads is None:
        return None
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(threads, usable_cores() // local))


def describe(device: torch.device) -> str:
    """A short description of ``device`` for logs and run records."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


__all__ = ["AMP_MODES", "CUDNN_MODES", "ALLOCATOR_MODES", "resolve_allocator", "apply_allocator", "DEVICES_HELP", "resolve_device", "resolve_amp", "resolve_cudnn", "apply_cudnn", "amp_dtype", "autocast", "grad_scaler",
           "to_device", "place", "usable_cores", "process_threads", "describe"]
