"""Where training runs, from one entry point: CUDA, TPU through PyTorch/XLA, Apple MPS or CPU; several
GPUs or TPU cores through an existing launcher (`torchrun`, `accelerate launch`), which sets the usual
WORLD_SIZE / RANK / LOCAL_RANK variables that this module reads.

torch_xla is imported only when an XLA device is asked for: it pairs with torch 2.9 only, so a TPU
machine is its own install (requirements-tpu.txt). `PJRT_DEVICE=CPU` runs the same XLA path on a CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import TrainError

XLA_INSTALL = ("PyTorch/XLA is not installed. It pairs only with torch 2.9: make a separate environment with "
               "`pip install -r requirements-tpu.txt` on the TPU machine (or with PJRT_DEVICE=CPU to try "
               "the XLA path on a CPU), then run with --device xla.")


@dataclass
class TrainDevice:
    kind: str  # "cuda", "xla", "mps" or "cpu"
    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None  # bf16 on CUDA and XLA

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def mark_step(self) -> None:
        """XLA executes the traced graph here; a no-op elsewhere."""
        if self.kind == "xla":
            import torch_xla

            torch_xla.sync()

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.kind == "cuda" else self.kind
        return f"{name} ({self.device})" + (f", rank {self.rank} of {self.world_size}" if self.distributed else "")


def _launcher_ranks() -> tuple[int, int, int]:
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def resolve_device(name: str | None = None, bf16: bool = True) -> TrainDevice:
    """The device named ("auto", "cuda", "cuda:1", "xla"/"tpu", "mps", "cpu"), or a TrainError saying why not."""
    name = (name or "auto").lower()
    rank, world, local_rank = _launcher_ranks()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("tpu", "xla"):
        try:
            import torch_xla
        except ImportError:
            raise TrainError(XLA_INSTALL) from None
        device = torch_xla.device()
        result = TrainDevice("xla", device, rank, world, torch.bfloat16 if bf16 else None)
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(f"--device {name}: PyTorch sees no CUDA GPU here (torch {torch.__version__}"
                             f"{'' if torch.version.cuda else ', a CPU-only build'}). Use --device cpu, or "
                             "install the CUDA build of torch on a GPU machine.")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise TrainError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
        torch.cuda.set_device(index)
        result = TrainDevice("cuda", torch.device("cuda", index), rank, world, torch.bfloat16 if bf16 else None)
    elif name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise TrainError("--device mps: Apple's Metal backend is not available on this machine.")
        result = TrainDevice("mps", torch.device("mps"), rank, world)
    elif name == "cpu":
        result = TrainDevice("cpu", torch.device("cpu"), rank, world)
    else:
        raise TrainError(f"--device {name}: unknown device; use auto, cuda, cuda:N, xla (TPU), mps or cpu.")
    if result.distributed:
        init_distributed(result)
    return result


def init_distributed(device: TrainDevice) -> None:
    """Join the process group the launcher prepared (nccl on CUDA, xla on TPU, gloo on CPU)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:
        raise TrainError("WORLD_SIZE > 1 but no MASTER_ADDR: start several processes with `torchrun "
                         "--nproc_per_node N -m engine train ...` or `accelerate launch`.")
    backend = {"cuda": "nccl", "xla": "xla"}.get(device.kind, "gloo")
    if backend == "xla":
        import torch_xla.distributed.xla_backend  # noqa: F401 - registers the backend
    dist.init_process_group(backend=backend, rank=device.rank, world_size=device.world_size)


def peak_memory_bytes(device: TrainDevice) -> int | None:
    """Peak accelerator memory since the last reset (None where PyTorch does not track it)."""
    if device.kind == "cuda":
        return int(torch.cuda.max_memory_allocated(device.device))
    return None
