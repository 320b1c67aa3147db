"""The training loop: objectives from obf.data.objectives, AdamW, warm-up + cosine, bf16 autocast, DDP.

Single process: `obf train DATA --out MODEL_DIR`. Many processes:
`torchrun --nproc_per_node N -m obf train DATA --out MODEL_DIR` (gloo on CPU, NCCL on CUDA);
each rank draws distinct sample indices, rank 0 alone writes checkpoints and metrics.
`train.batch_size` is per rank.

Resume is exact: sample i is a pure function of (seed, i), and the train state holds the
weights, the optimizer, the step and the RNG states, written atomically every
`checkpoint_every` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from obf.core.bits import LN2
from obf.core.config import ModelConfig, TrainConfig
from obf.core.params import Params
from obf.core.vocab import PAD
from obf.data.dataset import DataError, Dataset
from obf.data.objectives import Batch, ExampleSampler, collate, continue_example
from obf.mixer_fit import fit_model_mixer
from obf.model.checkpoint import CheckpointError, load_train_state, save_checkpoint
from obf.model.devices import resolve_device, use_bf16
from obf.model.network import OmniByteFormer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- devices and precision


# --------------------------------------------------------------------------- loss and schedule


def loss_bits(logits: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy in bits over non-PAD targets, and their count. logits (B, T, V), tgt (B, T)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum")
    return ce / LN2, (tgt != PAD).sum()


def lr_at(step: int, cfg: TrainConfig, time_progress: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at `steps` — or, with a `minutes`
    budget, at whichever budget runs out first: `time_progress` is the share of the minutes spent,
    so a run that the clock ends still ends annealed rather than cut off at a high rate."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_progress))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank, world, local)


# --------------------------------------------------------------------------- validation


@torch.no_grad()
def validation_bpb(model: OmniByteFormer, sampler: ExampleSampler, cfg: TrainConfig, device: torch.device,
                   bf16: bool) -> dict[str, float]:
    """Bits per target byte of the `continue` objective on fixed val windows, per modality."""
    model.eval()
    out: dict[str, float] = {}
    for m, records in sampler.by_modality.items():
        bits = count = 0.0
        examples = []
        for i in range(cfg.eval_batches * cfg.batch_size):
            r = records[i % len(records)]
            data = sampler.ds.file_bytes(r)
            rng = sampler.rng(10_000_000 + i)
            start = int(rng.integers(0, len(data) + 1))
            examples.append(continue_example(data, start, m, sampler.max_src_len, sampler.max_tgt_len, i,
                                             model.cfg.layout_input))
        for j in range(0, len(examples), cfg.batch_size):
            b = collate(examples[j:j + cfg.batch_size])
            src, dec, tgt = (torch.from_numpy(a).to(device) for a in (b.src, b.dec, b.tgt))
            places = None if b.places is None else torch.from_numpy(b.places).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(src, dec, places=places)
            s, n = loss_bits(logits, tgt)
            bits += s.item()
            count += n.item()
        out[m] = bits / max(count, 1.0)
    model.train()
    return out


# --------------------------------------------------------------------------- the loop


BUDGET_KEYS = ("steps", "minutes", "fp32_minutes")  # what a resumed run may change: how long it trains
AFTER_KEYS = ("mixer_fit_bytes",)  # used after the last step only: a resume may change them too


def _resume_train_config(cfg: TrainConfig) -> dict[str, Any]:
    """The train settings a resume must share with the checkpoint: all but the budget and what is
    used only after the last step."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in BUDGET_KEYS + AFTER_KEYS}


def _check_resume_state(state: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig, world: int,
                        data_sha256: str) -> None:
    """Refuse, with one line, a resume that would continue another run: another dataset (by the
    sha256 of its manifest), model section, train setting other than `steps` / `minutes`, or
    number of processes."""
    if state.get("model_config") != model_cfg.to_dict():
        raise CheckpointError("resume: the checkpoint's model config differs from params (model section)")
    saved = state.get("train_config", {})
    now = _resume_train_config(train_cfg)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise CheckpointError(f"resume: train.{key} differs from the checkpoint's ({saved.get(key)!r} vs "
                                  f"{now.get(key)!r}); only the budget (train.steps, minutes, fp32_minutes) may change")
    if state.get("data_sha256") != data_sha256:
        raise CheckpointError("resume: the dataset differs from the one the checkpoint was trained on "
                              "(manifest.json changed); train from scratch without --resume")
    if state.get("world_size", 1) != world:
        raise CheckpointError(f"resume: the checkpoint was trained with {state.get('world_size')} processes, "
                              f"not {world}")


def budget_minutes(cfg: TrainConfig, bf16: bool, device: torch.device) -> float:
    """The wall-clock budget a run trains under (0 = steps only): `train.minutes` when set, else
    `train.fp32_minutes` when it trains in fp32 on a CPU. A CPU without bf16 runs a step several
    times slower (README, Training time); the fp32 budget lets such a host finish an annealed model
    in about the time the default takes elsewhere rather than in an hour, while a bf16 run keeps
    its steps and so its bitwise-reproducible model. A GPU in fp32 (one without bf16) is fast
    enough for its steps, and a long GPU recipe must not end at a CPU's budget."""
    if cfg.minutes > 0:
        return cfg.minutes
    return cfg.fp32_minutes if device.type == "cpu" and not bf16 else 0.0


class _Budget:
    """The budget's clock (`budget_minutes`): seconds of training spent (across resumes) as a share of it.

    Under DDP every rank takes rank 0's reading, so the learning rate and the step that ends the
    run are the same on all ranks (a rank that stopped alone would leave the others hanging in
    their next gradient all-reduce)."""

    def __init__(self, budget_s: float, spent_before: float, d: Dist, device: torch.device) -> None:
        self.budget_s, self.before, self.d, self.device = budget_s, spent_before, d, device
        self.t0 = time.monotonic()

    def spent(self) -> float:
        return self.before + time.monotonic() - self.t0

    def progress(self) -> float:
        if self.budget_s <= 0:
            return 0.0
        share = self.spent() / self.budget_s
        if self.d.world > 1:
            t = torch.tensor([share], dtype=torch.float64, device=self.device)
            dist.broadcast(t, src=0)
            share = float(t.item())
        return share


def training_samplers(ds: Dataset, params: Params) -> tuple[ExampleSampler, ExampleSampler]:
    """The samplers of ordinary steps (every objective, `train.src_len` context, `train.windows`
    per continue example) and of long steps (one `continue` chunk of `train.long_windows` at the
    model's whole context; see `step_batch`), over the train split."""
    t, m = params.train, params.model
    kw = dict(
        max_tgt_len=m.max_tgt_len,
        balance_modalities=t.balance_modalities,
        modality_weights=t.modality_weights,
        noise_density=t.noise_density,
        mean_span=t.mean_span,
    )
    short = ExampleSampler(
        ds,
        "train",
        max_src_len=t.src_len or m.max_src_len,
        task_weights=t.task_weights,
        seed=t.seed,
        random_bytes_weight=t.random_bytes_weight,
        windows=t.windows,
        max_input_len=m.input_len,
        query_map=m.query_map,
        input_end=m.input_end,
        layout_input=m.layout_input,
        paired_places=m.paired_placed,
        **kw,
    )
    long = ExampleSampler(
        ds,
        "train",
        max_src_len=m.max_src_len,
        task_weights={"continue": 1.0},
        seed=t.seed + 1,
        windows=t.long_windows,
        layout_input=m.layout_input,
        **kw,
    )
    return short, long


def is_long_step(step: int, cfg: TrainConfig) -> bool:
    """Every `long_every`-th step (the last of each group of that many) is a long step."""
    return cfg.long_every > 0 and step % cfg.long_every == cfg.long_every - 1


def step_batch(step: int, d: Dist, cfg: TrainConfig, short: ExampleSampler, long: ExampleSampler) -> Batch:
    """The batch of `step` on this rank, a pure function of (step, rank): ordinary steps draw
    `batch_size` examples at the context `src_len`; a long step draws one `continue` chunk of
    `long_windows` windows at the model's whole context. Long contexts cost an encoder pass over
    up to `max_src_len` bytes per example, so they come as whole steps of one example (no
    padding of short rows to their length) and serve many windows each."""
    if is_long_step(step, cfg):
        return long.batch([step * d.world + d.rank])
    base = (step * d.world + d.rank) * cfg.batch_size
    return short.batch(list(range(base, base + cfg.batch_size)))


def _to_device(b: Batch, device: torch.device) -> tuple[torch.Tensor | None, ...]:
    """src (B, S), dec (N, T), tgt (N, T), rows (N,), visible (N,), align (N,), shift (N, T),
    places (N, T, 3) on `device` (shift None when no query moves: a batch without a mapped
    `paired` window; places None for a model without `layout_input`)."""
    arrays = (b.src, b.dec, b.tgt, b.rows, b.visible, b.align, b.moved, b.places)
    return tuple(None if a is None else torch.from_numpy(a).to(device, non_blocking=True) for a in arrays)


def train(
    data_dir: str | Path,
    model_dir: str | Path,
    params: Params,
    *,
    resume: bool = False,
    live_dir: str | Path | None = None,
    progress: bool = True,
    sample_log: str | None = None,
) -> dict[str, Any]:
    """Train on the ingested dataset in `data_dir`; write the model and train state to `model_dir`."""
    from tqdm import tqdm

    tcfg, mcfg = params.train, params.model
    model_dir = Path(model_dir)
    ds = Dataset(data_dir)
    if ds.manifest.get("files", 0) == 0 or not ds.records:
        raise DataError(f"{data_dir}: the dataset holds no file; nothing to train on")
    train_sampler, long_sampler = training_samplers(ds, params)
    if train_sampler.long_inputs:
        log.warning("train: %d pairs left out: their inputs exceed model.max_input_len (%d ids with the tags)",
                    train_sampler.long_inputs, mcfg.input_len)
    sampler_kw = dict(
        max_src_len=tcfg.src_len or mcfg.max_src_len,
        max_tgt_len=mcfg.max_tgt_len,
        balance_modalities=tcfg.balance_modalities,
        noise_density=tcfg.noise_density,
        mean_span=tcfg.mean_span,
    )
    try:
        val_sampler: ExampleSampler | None = ExampleSampler(
            ds, "val", task_weights={"continue": 1.0}, seed=tcfg.seed, modality_weights={}, **sampler_kw
        )
    except DataError:
        val_sampler = None
    state = load_train_state(model_dir) if resume else None
    data_sha256 = hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()

    d = init_distributed(tcfg.device)
    device = resolve_device(tcfg.device, "train.device")
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)  # one GPU per rank
    bf16 = use_bf16(device, tcfg.precision)
    torch.manual_seed(tcfg.seed)
    model = OmniByteFormer(mcfg).to(device)
    opt = make_optimizer(model, tcfg, device)
    start_step = 0
    if state is not None:
        _check_resume_state(state, mcfg, tcfg, d.world, data_sha256)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        torch.set_rng_state(state["torch_rng"])
    model.train()
    net: torch.nn.Module = model
    if tcfg.compile:
        net = torch.compile(net)
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.local_rank] if device.type == "cuda" else None
        )

    live = None
    if d.main:
        model_dir.mkdir(parents=True, exist_ok=True)
        live = _open_live(live_dir if live_dir is not None else model_dir / "dvclive", resume=state is not None)
    log_f = open(f"{sample_log}.rank{d.rank}", "a") if sample_log else None

    def checkpoint(step: int, val: dict[str, float] | None, final: bool = False) -> None:
        if not d.main:
            return
        state = {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "step": step,
            "torch_rng": torch.get_rng_state(),
            "model_config": mcfg.to_dict(),
            "train_config": _resume_train_config(tcfg),
            "data_sha256": data_sha256,
            "world_size": d.world,
            "seconds": clock.spent(),
        }  # the mixer's fit below is not training time
        t = time.perf_counter()
        mixer = fit_model_mixer(model, ds, tcfg) if final else None
        fit_seconds[0] += time.perf_counter() - t
        save_checkpoint(
            model_dir,
            model,
            mcfg,
            state,
            step=step,
            extra={
                "val_bpb": val or {},
                "ingest": ds.manifest.get("ingest"),
                **({"mixer": mixer.to_dict()} if mixer is not None else {}),
            },
        )

    fit_seconds = [0.0]
    minutes = budget_minutes(tcfg, bf16, device)
    if d.main and minutes > 0 and tcfg.minutes <= 0:
        log.info("train: training in fp32 on the CPU, so train.fp32_minutes=%g caps training at %g minutes "
                 "(the learning rate anneals by then); set it to 0 to train all %d steps", minutes, minutes, tcfg.steps)
    clock = _Budget(minutes * 60, float(state.get("seconds", 0.0)) if state else 0.0, d, device)
    bar = tqdm(
        total=tcfg.steps,
        initial=start_step,
        desc="train",
        unit="step",
        disable=not (progress and d.main),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    step = start_step
    last_val: dict[str, float] | None = None
    t0, bytes_seen, tokens_window, time_window = time.perf_counter(), 0, 0, time.perf_counter()
    loss_value = float("nan")
    time_progress = clock.progress()
    final = step >= tcfg.steps or time_progress >= 1.0
    try:
        while not final:
            lr = lr_at(step, tcfg, time_progress)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = step_batch(step, d, tcfg, train_sampler, long_sampler)
            if log_f:
                for e_idx, m, t in zip(batch.indices, batch.modalities, batch.tasks):
                    log_f.write(json.dumps({"step": step, "index": e_idx, "modality": m, "task": t}) + "\n")
            src, dec, tgt, rows, visible, align, shift, places = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = net(src, dec, rows, visible, align, shift, places)  # (N, T, V): every window of every example
            bits, n = loss_bits(logits, tgt)
            loss = bits / n.clamp(min=1)
            opt.zero_grad(set_to_none=True)
            (loss * LN2).backward()  # gradients of the loss in nats (the usual scale for AdamW's lr)
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            loss_value = loss.item()
            n_bytes = int(n.item()) * d.world
            bytes_seen += n_bytes
            tokens_window += n_bytes
            now = time.perf_counter()
            rate = tokens_window / max(now - time_window, 1e-9)
            bar.update(1)
            bar.set_postfix(loss_bpb=f"{loss_value:.3f}", bytes_s=f"{rate:,.0f}", refresh=False)
            if live is not None:
                live.log_metric("train/loss_bpb", loss_value)
                live.log_metric("train/lr", lr)
                live.log_metric("train/bytes_per_s", rate)
            if now - time_window > 30:
                tokens_window, time_window = 0, now
            time_progress = clock.progress()  # the same on every rank, so all stop at the same step
            final = step >= tcfg.steps or time_progress >= 1.0
            if d.main and val_sampler is not None and (step % tcfg.eval_every == 0 or final):
                last_val = validation_bpb(model, val_sampler, tcfg, device, bf16)
                if live is not None:
                    for m, v in last_val.items():
                        live.log_metric(f"val/bpb/{m}", v)
                    live.log_metric("val/bpb/mean", sum(last_val.values()) / len(last_val))
            if live is not None:
                live.next_step()
            if step % tcfg.checkpoint_every == 0 or final:
                checkpoint(step, last_val, final)
    finally:
        bar.close()
        if log_f:
            log_f.close()
    elapsed = time.perf_counter() - t0 - fit_seconds[0]  # training alone; the mixer's fit is reported beside it
    summary = {
        "steps": step,
        "start_step": start_step,
        "seconds": elapsed,
        "mixer_fit_seconds": fit_seconds[0],
        "target_bytes_per_s": bytes_seen / max(elapsed, 1e-9),
        "final_loss_bpb": loss_value,
        "val_bpb": last_val or {},
        "params": model.num_params(),
        "device": str(device),
        "precision": "bf16" if bf16 else "fp32",
        "budget_minutes": minutes,
        "world_size": d.world,
    }
    if live is not None:
        for k in ("target_bytes_per_s", "params"):
            live.summary[k] = summary[k]
        live.end()
    if d.main:
        (model_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        vals = ", ".join(f"{m} {v:.3f}" for m, v in (last_val or {}).items())
        log.info("train: %d steps in %.0fs (mixer fit %.0fs), %s target bytes/s on %s (%s); val bpb: %s", step, elapsed,
                 fit_seconds[0], f"{summary['target_bytes_per_s']:,.0f}", device, summary["precision"], vals or "n/a")
    if d.world > 1:
        dist.barrier()
    return summary


def _open_live(path: str | Path, *, resume: bool):
    """DVCLive logger; it writes metrics/plots only (dvc.yaml declares them, DVCLive must not edit it).

    Without dvclive installed (a bare GPU box, say) training still runs and writes train_summary.json.
    """
    try:
        from dvclive import Live
    except ImportError:
        log.warning("train: dvclive is not installed; no DVCLive metrics or plots are written")
        return None
    return Live(dir=str(path), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None)
