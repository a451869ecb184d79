"""The training loop: Adam with warm-up, gradient clipping, EMA, atomic resumable checkpoints, DDP.

Reporting goes through a callback (`TrainCallbacks`), never prints. A run lives in one folder:

    config.json         the RunConfig this run trains
    state.safetensors   resumable state: model, EMA, Adam moments, step (atomic, every few minutes)
    model.safetensors   release export: the EMA weights with their config (vdgen checkpoint format)
    log.jsonl           one line per logged step: step, loss, lr, samples/s
    samples/            PNG contact sheets of EMA samples; loss.png, the loss curve

Batches and noise are pure functions of (seed, rank, step), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from vdgen.atomic import write_text_atomic
from vdgen.checkpoint import build_network, load_tensors, save_model, save_tensors
from vdgen.config import RunConfig, TrainConfig, from_dict, load_run_config, to_dict
from vdgen.data import ClipDataset, MovingMNIST, make_batch
from vdgen.diffusion import training_loss
from vdgen.errors import TrainingError
from vdgen.precision import autocast, emulated_bf16_warning, resolve_precision

STATE_FORMAT = "vdgen-train-state"


@dataclass
class TrainCallbacks:
    """Hooks the CLI (or a test) uses to watch training; every one is optional."""

    on_step: Callable[[int, int, float, float, float], None] | None = None  # step, total, loss, lr, samples/s
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_sample: Callable[[int, Path], None] | None = None
    on_message: Callable[[str], None] | None = None


@dataclass
class DistInfo:
    """Where this process sits in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainState:
    """Everything that changes during training."""

    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    losses: list[float] = field(default_factory=list)


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int = 0, decay_steps: int = 0) -> float:
    """The learning rate of optimiser step `step` (0-based).

    Linear warm-up to base_lr over warmup_steps, then constant (the paper's Adam setting); with
    decay_steps = D > 0, the last D steps before total_steps decay linearly towards zero, at
    D / (D + 1), ..., 1 / (D + 1) of base_lr (warm-up, stable, decay). Where the two overlap the
    smaller factor wins. A copy of a constant-rate run resumed with total_steps = its step + D
    branches a cool-down off it while the original goes on.
    """
    if decay_steps > 0 and total_steps < decay_steps:
        raise ValueError(f"a decay over {decay_steps} steps needs total_steps >= {decay_steps}, got {total_steps}")
    factor = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if decay_steps > 0:
        factor = min(factor, max(0.0, (total_steps - step) / (decay_steps + 1)))
    return base_lr * factor


def _rate(t: TrainConfig, step: int) -> float:
    """learning_rate for step `step` of the run `t` configures."""
    return learning_rate(step, t.lr, t.warmup_steps, t.steps, t.decay_steps)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after `step` optimiser steps: min(decay, (1 + step) / (10 + step)).

    The warm-up keeps the initial random weights from lingering in the EMA of a short run (with a
    fixed 0.999 they would still weigh 0.999^1000 = 37% after 1,000 steps).
    """
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * net, parameter by parameter; buffers copied."""
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for one (rank, step): the source of that step's noise, times and dropout."""
    import numpy as np

    return int(np.random.default_rng([seed, rank, step]).integers(2**63 - 1))


def new_state(config: RunConfig, device: torch.device) -> TrainState:
    torch.manual_seed(config.train.seed)
    net = build_network(config.model).to(device)
    ema = build_network(config.model).to(device)
    ema.load_state_dict(net.state_dict())
    ema.eval().requires_grad_(False)
    t = config.train
    optimizer = torch.optim.Adam(
        net.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay
    )
    return TrainState(net, ema, optimizer)


def state_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """Flatten model, EMA and Adam moments into named tensors for safetensors."""
    tensors = {f"model.{k}": v for k, v in state.net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.state_dict().items()})
    for index, moments in state.optimizer.state_dict()["state"].items():
        for key, value in moments.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    return tensors


def save_state(run_dir: Path, state: TrainState, config: RunConfig) -> Path:
    """Atomically write the resumable state (temporary file, fsync, rename)."""
    path = run_dir / "state.safetensors"
    meta = {
        "format": STATE_FORMAT,
        "step": str(state.step),
        "config": json.dumps(to_dict(config)),
        "param_groups": json.dumps(
            [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.state_dict()["param_groups"]]
        ),
        "losses": json.dumps(state.losses[-20000:]),
    }
    save_tensors(path, state_tensors(state), meta)
    return path


def load_state(run_dir: Path, config: RunConfig, device: torch.device) -> TrainState:
    """Rebuild a TrainState from run_dir/state.safetensors, strictly."""
    path = run_dir / "state.safetensors"
    tensors, meta = load_tensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a vdgen training state")
    try:
        saved = from_dict(RunConfig, json.loads(meta["config"]), "config")
    except (KeyError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: training state has no readable config") from exc
    if saved.model != config.model or saved.diffusion != config.diffusion:
        raise TrainingError(f"{path}: was trained with a different model or diffusion config than {run_dir / 'config.json'}")
    try:
        return _restore_state(tensors, meta, config, device)
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{path}: damaged training state ({reason[:200]})") from exc


def _restore_state(tensors: dict[str, torch.Tensor], meta: dict[str, str], config: RunConfig, device: torch.device) -> TrainState:
    state = new_state(config, device)
    state.net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            optim_state.setdefault(int(index), {})[key] = value
    groups = json.loads(meta["param_groups"])
    groups[0]["params"] = list(range(len(list(state.net.parameters()))))
    state.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    state.step = int(meta["step"])
    state.losses = [float(v) for v in json.loads(meta.get("losses", "[]"))]
    return state


def export_release(run_dir: Path, state: TrainState, config: RunConfig, wall_seconds: float) -> Path:
    """Write model.safetensors: the EMA weights in the vdgen checkpoint format."""
    path = run_dir / "model.safetensors"
    provenance = {
        "dataset": config.train.dataset,
        "steps": state.step,
        "batch_size": config.train.batch_size,
        "image_frames": config.train.image_frames,
        "train_wall_seconds_this_process": round(wall_seconds, 1),
        "weights": "ema",
        "ema_decay": config.train.ema_decay,
    }
    save_model(path, state.ema.state_dict(), config.model, config.diffusion, provenance)
    return path


def make_dataset(config: RunConfig, split: str = "train", report: Callable[[str], None] | None = None) -> ClipDataset:
    """The dataset a run config names (Moving MNIST, or a folder of videos or images; `report` hears what it holds)."""
    m, t = config.model, config.train
    if t.dataset == "moving-mnist":
        if t.image_dataset:
            raise TrainingError("train.image_dataset needs a folder dataset, not moving-mnist")
        # Area-downsampled to 32x32 (16x16 for the tiny test model), or native 64x64.
        size = (16 if (m.height, m.width) == (16, 16) else 32) if t.mnist_downsample else 64
        if (m.height, m.width) != (size, size) or m.channels != 1:
            raise TrainingError(f"moving-mnist gives 1x{size}x{size} frames; the model is {m.channels}x{m.height}x{m.width}")
        return MovingMNIST(frames=m.frames, size=size, split=split, seed=t.seed)
    from vdgen.data_folders import folder_dataset

    return folder_dataset(Path(t.dataset), m, t, report)


def dist_info() -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops between steps so saved state is never half-updated."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum


def train(
    run_dir: Path,
    config: RunConfig | None = None,
    *,
    resume: bool = False,
    device: str = "cpu",
    max_steps: int | None = None,
    callbacks: TrainCallbacks | None = None,
) -> TrainState:
    """Train (or resume) the run in `run_dir` until config.train.steps (or max_steps more steps)."""
    callbacks = callbacks or TrainCallbacks()
    run_dir = Path(run_dir)
    dist = dist_info()
    config = _prepare_run_dir(run_dir, config, resume, write=dist.is_main)
    if resume and dist.is_main:
        _remove_stale_temporaries(run_dir)
    t = config.train
    if dist.world > 1:
        import torch.distributed as torch_dist

        # gloo beside NCCL: the precision and stop flags are CPU tensors.
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        torch_dist.init_process_group(backend)
        if device.startswith("cuda"):
            device = f"cuda:{dist.local_rank}"
            torch.cuda.set_device(device)
    dev = torch.device(device)
    if t.threads:
        torch.set_num_threads(t.threads)
    precision = resolve_precision(t.precision, dev)
    if dist.world > 1:
        precision = _agree_on_precision(precision)
    warning = emulated_bf16_warning(precision, dev)
    if warning and callbacks.on_message and dist.is_main:
        callbacks.on_message(f"warning: {warning}")
    if t.precision == "auto":
        # Pin what "auto" chose in config.json, so a resumed run never flips between fp32 and bf16.
        config = dataclasses.replace(config, train=dataclasses.replace(t, precision=precision))
        t = config.train
        if dist.is_main:
            write_text_atomic(run_dir / "config.json", json.dumps(to_dict(config), indent=2) + "\n")

    state = load_state(run_dir, config, dev) if resume and (run_dir / "state.safetensors").exists() else new_state(config, dev)
    if resume and dist.is_main:
        _drop_log_records_after(run_dir, state.step)
    decay_from = t.steps - t.decay_steps
    if resume and t.decay_steps and state.step > decay_from and callbacks.on_message and dist.is_main:
        callbacks.on_message(
            f"the learning rate decays over steps {decay_from + 1} to {t.steps}; resuming after step {state.step}, "
            f"the next step at {_rate(t, state.step) / t.lr:.2f} of lr {t.lr:g}"
        )
    if resume and state.step == 0 and callbacks.on_message and dist.is_main:
        callbacks.on_message(f"no saved state in {run_dir}; starting from step 0")
    model: nn.Module = state.net
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(state.net)
    dataset = make_dataset(config, report=callbacks.on_message if dist.is_main else None)
    last_step = t.steps if max_steps is None else min(t.steps, state.step + max_steps)
    if callbacks.on_message and dist.is_main:
        callbacks.on_message(f"training {run_dir} from step {state.step} to {last_step} ({precision}, {torch.get_num_threads()} threads)")

    stop = _StopFlag()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} if _in_main_thread() else {}
    started = time.monotonic()
    last_save = started
    window_start, window_samples = time.monotonic(), 0
    try:
        while state.step < last_step and not _stop_requested(stop, dist):
            loss = _train_step(model, state, config, dataset, dist, dev, precision)
            if not math.isfinite(loss):
                raise TrainingError(
                    f"loss became {loss} at step {state.step + 1}; stopped, keeping the last good checkpoint in {run_dir}"
                )
            state.step += 1
            state.losses.append(loss)
            window_samples += t.batch_size * dist.world
            if dist.is_main and (state.step % t.log_every == 0 or state.step == last_step):
                elapsed = time.monotonic() - window_start
                rate = window_samples / max(elapsed, 1e-9)
                lr = _rate(t, state.step - 1)
                recent = state.losses[-t.log_every :]
                _append_log(run_dir, {"step": state.step, "loss": sum(recent) / len(recent), "lr": lr, "samples_per_s": rate})
                if callbacks.on_step:
                    callbacks.on_step(state.step, last_step, loss, lr, rate)
                window_start, window_samples = time.monotonic(), 0
            if dist.is_main and state.step % t.sample_every == 0:
                _write_samples(run_dir, state, config, callbacks)
            if time.monotonic() - last_save > 60 * t.checkpoint_minutes:
                _checkpoint(run_dir, state, config, dist, started, callbacks)
                last_save = time.monotonic()
        _checkpoint(run_dir, state, config, dist, started, callbacks)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if dist.world > 1:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()
    if stop.signal is not None:
        raise KeyboardInterrupt
    return state


def _train_step(
    model: nn.Module, state: TrainState, config: RunConfig, dataset: ClipDataset, dist: DistInfo,
    device: torch.device, precision: str,
) -> float:
    """One optimisation step; returns the loss (under DDP its mean over ranks)."""
    t = config.train
    seed = step_seed(t.seed, dist.rank, state.step)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global RNG; seeding it per step keeps resume exact
    first = (state.step * dist.world + dist.rank) * t.batch_size
    x, image_mask = make_batch(dataset, list(range(first, first + t.batch_size)), t.image_frames)
    x = x.to(device)
    image_mask = None if image_mask is None else image_mask.to(device)
    lr = _rate(t, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    model.train()
    with autocast(precision, device):
        loss = training_loss(model, config.diffusion, x, generator, image_mask)
    reported = _mean_over_ranks(loss.detach(), dist)
    if not math.isfinite(reported):
        return reported  # every rank sees it, so all skip the backward and stop together
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Clip (or, with grad_clip 0, only measure) the gradient norm; a non-finite one would poison the weights.
    grad_norm = torch.nn.utils.clip_grad_norm_(state.net.parameters(), t.grad_clip if t.grad_clip > 0 else math.inf)
    if not torch.isfinite(grad_norm):
        raise TrainingError(
            f"gradient norm became {float(grad_norm)} at step {state.step + 1}; stopped before updating the weights, "
            "keeping the last good checkpoint"
        )
    state.optimizer.step()
    update_ema(state.ema, state.net, ema_decay_at(state.step, t.ema_decay))
    return reported


def _checkpoint(run_dir: Path, state: TrainState, config: RunConfig, dist: DistInfo, started: float, callbacks: TrainCallbacks) -> None:
    if not dist.is_main:
        return
    path = save_state(run_dir, state, config)
    export_release(run_dir, state, config, time.monotonic() - started)
    _write_loss_plot(run_dir, state)
    if callbacks.on_checkpoint:
        callbacks.on_checkpoint(state.step, path)


def _prepare_run_dir(run_dir: Path, config: RunConfig | None, resume: bool, write: bool = True) -> RunConfig:
    """Check run_dir against `resume` and return the run's config; write config.json when `write` (rank 0)."""
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise TrainingError(f"cannot resume: {config_path} does not exist")
        saved = load_run_config(config_path.read_text(), str(config_path))
        if config is not None and config != saved:
            if config.model != saved.model or config.diffusion != saved.diffusion:
                raise TrainingError(f"cannot resume {run_dir} with a different model or diffusion config")
            if write:
                write_text_atomic(config_path, json.dumps(to_dict(config), indent=2) + "\n")
            return config
        return saved
    if config is None:
        raise TrainingError("a new run needs a config")
    if (run_dir / "state.safetensors").exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(config_path, json.dumps(to_dict(config), indent=2) + "\n")
    return config


def _append_log(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _drop_log_records_after(run_dir: Path, step: int) -> None:
    """On resume, drop log lines of steps after the saved `step` (a killed run logged them, then lost them)."""
    path = run_dir / "log.jsonl"
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes a killed run left behind (never renamed into place)."""
    patterns = [f".{name}.*.tmp*" for name in ("state.safetensors", "model.safetensors", "config.json", "loss.png")]
    for pattern in [*patterns, ".tmp??????"]:  # the last: safetensors' own temporary file inside save_file
        for stale in run_dir.glob(pattern):
            stale.unlink(missing_ok=True)


def _write_samples(run_dir: Path, state: TrainState, config: RunConfig, callbacks: TrainCallbacks) -> None:
    """A contact sheet of 4 EMA samples (seeds 0..3) at this step."""
    from vdgen.generate import sample_videos
    from vdgen.video import contact_sheet, write_png

    # Sample where the EMA lives: sample_videos defaults to the CPU, which fails for a model on a GPU.
    frames = sample_videos(
        state.ema, config.model, config.diffusion, seeds=[0, 1, 2, 3], steps=config.train.sample_steps, sampler="ddim",
        device=next(state.ema.parameters()).device,
    )
    (run_dir / "samples").mkdir(exist_ok=True)
    path = run_dir / "samples" / f"step_{state.step:07d}.png"
    write_png(path, contact_sheet(frames))
    if callbacks.on_sample:
        callbacks.on_sample(state.step, path)


def _write_loss_plot(run_dir: Path, state: TrainState) -> None:
    from vdgen.plot import loss_curve_png

    loss_curve_png(run_dir / "loss.png", state.losses)


def _mean_over_ranks(loss: torch.Tensor, dist: DistInfo) -> float:
    """The scalar loss, averaged over ranks under DDP (for the log and the non-finite check)."""
    if dist.world == 1:
        return float(loss)
    import torch.distributed as torch_dist

    total = loss.float().reshape(1).clone()
    torch_dist.all_reduce(total)
    return float(total) / dist.world


def _stop_requested(stop: _StopFlag, dist: DistInfo) -> bool:
    """Whether to stop before the next step; under DDP a signal on any rank stops all at the same step."""
    if dist.world == 1:
        return stop.signal is not None
    import torch.distributed as torch_dist

    flag = torch.tensor([0 if stop.signal is None else 1])
    torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
    if int(flag) and stop.signal is None:
        stop.signal = signal.SIGTERM
    return bool(int(flag))


def _agree_on_precision(precision: str) -> str:
    """Under DDP every rank must use the same precision: rank 0's choice wins."""
    import torch.distributed as torch_dist

    flag = torch.tensor([1 if precision == "bf16" else 0])
    torch_dist.broadcast(flag, src=0)
    return "bf16" if int(flag) else "fp32"


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
