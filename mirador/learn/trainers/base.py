"""One Trainer interface for every backend, and the hyperparameters they all take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mirador.errors import MiradorError


@dataclass
class Hyperparams:
    rank: int = 8
    alpha: float = 16.0
    layers: int = 0  # LoRA on the last N transformer blocks; 0: all of them
    lr: float = 1e-5
    iterations: int = 100
    max_seq_len: int = 512
    batch_size: int = 1
    seed: int = 0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data


@dataclass
class TrainResult:
    adapter_dir: Path  # the backend's own adapter (PEFT or MLX folder)
    steps: int
    train_tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # training loss per step
    valid_before: float = float("nan")  # held-out loss of the base model
    valid_after: float = float("nan")  # held-out loss with the adapter
    stopped_early: str | None = None  # why training stopped before `iterations` (the time budget)
    samples: dict[str, str] = field(default_factory=dict)  # sanity prompt -> answer with the adapter
    base_samples: dict[str, str] = field(default_factory=dict)  # the same prompts answered before training

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapter_dir"] = str(self.adapter_dir)
        data["tokens_per_s"] = round(self.tokens_per_s, 1)
        return data


class Trainer(Protocol):
    name: str

    def train(self, base_dir: Path, train: list[list[dict[str, str]]], valid: list[list[dict[str, str]]],
              out_dir: Path, hp: Hyperparams, *, deadline: float | None = None,
              sanity_prompts: list[str] | None = None, progress: Callable[[int, int, float, int], None] | None = None,
              sample_base: bool = False) -> TrainResult:
        """Train a LoRA adapter on chat conversations; stop cleanly at `deadline` (time.monotonic()).

        `progress(step, total, loss, tokens_so_far)` is called after every optimizer step (see
        mirador/learn/progress.py); with `sample_base` the sanity prompts are also answered by the
        base model before training (TrainResult.base_samples, for the judge and the coherence check).
        """
        ...


BACKENDS = ("torch", "mlx")


def default_backend() -> str:
    """mlx on Apple Silicon (unified memory, Metal), torch elsewhere (CPU or CUDA)."""
    import platform

    return "mlx" if platform.system() == "Darwin" and platform.machine() == "arm64" else "torch"


def resolve_backend(name: str | None) -> str:
    """`auto` (or nothing) is this machine's default; anything else is taken as given."""
    return default_backend() if name in (None, "", "auto") else name


def get_trainer(name: str) -> Trainer:
    name = resolve_backend(name)
    if name == "torch":
        from mirador.learn.trainers.torch_lora import TorchLoraTrainer, require_torch

        require_torch()  # before minutes of dataset and conversion work, not after
        return TorchLoraTrainer()
    if name == "mlx":
        from mirador.learn.trainers.mlx_lora import MlxLoraTrainer, require_mlx

        require_mlx()
        return MlxLoraTrainer()
    raise MiradorError(f"unknown training backend '{name}'", hint=f"choose one of: {', '.join(BACKENDS)}")
