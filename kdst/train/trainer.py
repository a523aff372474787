"""``kdst train``: one training program for one CPU process, one GPU and many (torchrun + DDP).

Read it top to bottom: ``build`` makes data, model and optimiser from the
config; ``compute_loss`` runs one batch; ``train_one_epoch`` steps through the
batches of an epoch from where a resumed run left off; ``validate``; ``run``
ties them together with checkpoints.  The model's ``forward(batch)`` returns
``(loss, stats)``, so new losses plug in without the trainer knowing them.

SIGINT, SIGTERM, SIGHUP and SIGUSR1 finish the current step, save ``last.pt`` and stop
(TrainingStopped).  SIGUSR1 is what Slurm sends ahead of a time limit
(``--signal=USR1@120``): under Slurm rank 0 then requeues the job, whose next
run continues with ``--resume`` (egs/TEMPLATE/utils/slurm_train.sbatch).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from kdst.config import DataConfig, OptimConfig, TrainingConfig, resume_differences
from kdst.config import load_config  # noqa: F401  (re-exported: the loader `kdst train` uses)
from kdst.data.dataset import make_batches, make_dataset, shard_batches
from kdst.data.loader import batch_loader
from kdst.data.nbest_targets import load_nbest_targets
from kdst.data.specaugment import spec_augment
from kdst.data.tokenizer import load_tokenizer
from kdst.data.files import atomic_write_text, exclusive_lock, remove_stale_temporaries
from kdst.errors import KdstError
from kdst.models import build_model
from kdst.models.loading import load_submodules, load_weights, read_checkpoint, saved_config
from kdst.launch.guard import die_with_parent
from kdst.launch.requeue import REQUEUED_EXIT, requeue
from kdst.train.checkpoint import prune, rng_state, save_atomic, set_rng_state
from kdst.train.frame_kd import setup_kd

log = logging.getLogger("kdst.train")


class TrainingStopped(Exception):
    """A signal stopped training after ``last.pt`` was saved; ``exit_code`` says how the process should end."""

    def __init__(self, signum: int, checkpoint: Path, requeued: bool):
        name = signal.Signals(signum).name
        then = (f"Slurm job {os.environ.get('SLURM_JOB_ID')} was requeued and continues from it" if requeued
                else "continue with --resume")
        super().__init__(f"stopped by {name} after saving {checkpoint}; {then}")
        # 75 (EX_TEMPFAIL) tells kdst's Slurm task wrapper the job runs again; else as a shell reports a signal
        self.exit_code = REQUEUED_EXIT if requeued else 128 + signum


@dataclass
class Progress:
    """Where training is; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 1
    batch_in_epoch: int = 0  # batches of this epoch (this rank's share) already trained on
    step: int = 0            # optimiser steps so far
    history: dict[int, float] = field(default_factory=dict)  # epoch -> validation loss


# --- setup -----------------------------------------------------------------------

def build_datasets(data: DataConfig, seed: int = 1) -> tuple[object, object, dict]:
    """Train and validation datasets, and the vocabulary sizes the model needs."""
    for key in ("train", "valid", "tokenizer", "max_units"):
        if getattr(data, key) is None:
            raise KdstError(f"data.{key} is not set (the recipe sets it with --set data.{key}=...)")
    sizes = {"vocab_size": len(load_tokenizer(data.tokenizer).tokens)}
    if data.input == "text":
        sizes["src_vocab_size"] = len(load_tokenizer(data.src_tokenizer).tokens)
    if data.ctc_text:
        sizes["ctc_vocab_size"] = len(load_tokenizer(data.ctc_tokenizer).tokens)
    # Students trained on teacher outputs (data.text: text.seqkd) are still validated on gold references.
    valid = replace(data, text=data.valid_text or data.text)
    train_set = make_dataset(data, data.train)
    if data.nbest_targets:  # the teacher's N-best pseudo labels replace data.text's targets
        train_set = load_nbest_targets(train_set, data.nbest_targets, data.train, load_tokenizer(data.tokenizer),
                                       gold_text=data.text, seed=seed)
    return train_set, make_dataset(valid, data.valid), sizes


def lr_lambda(optim: OptimConfig):
    """Learning-rate multiplier per step: noam (warmup, then 1/sqrt), linear decay or constant."""
    warmup = max(optim.warmup_steps, 1)
    if optim.schedule == "noam":
        return lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))
    if optim.schedule == "linear":
        total = optim.total_steps
        return lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(total - warmup, 1)))
    return lambda step: min((step + 1) / warmup, 1.0)  # constant


def kd_parameters(loss_model: torch.nn.Module, student: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """What the loss model trains besides the student (frame-level KD's projection), by name: the optimiser
    steps them after the student's parameters, and checkpoints keep them apart from the student's weights."""
    own = {id(p) for p in student.parameters()}
    return {name: p for name, p in loss_model.named_parameters() if p.requires_grad and id(p) not in own}


def load_kd_parameters(params: dict[str, torch.nn.Parameter], saved: dict, path: Path) -> None:
    """A stopped run's KD parameters (its checkpoint's "kd") into this run's, or one line saying how they differ."""
    if set(saved) != set(params):
        raise KdstError(f"{path}: holds KD parameters {sorted(saved) or 'none'}, this run trains "
                        f"{sorted(params) or 'none'}: remove {path.parent} to start afresh")
    with torch.no_grad():
        for name, p in params.items():
            if saved[name].shape != p.shape:
                raise KdstError(f"{path}: the KD parameter {name} is {tuple(saved[name].shape)}, this run's is "
                                f"{tuple(p.shape)}")
            p.copy_(saved[name])


def check_resumable(saved: TrainingConfig, config: TrainingConfig, path: Path) -> None:
    """A run continues only with what defines it unchanged; the length of training may change."""
    changed = resume_differences(saved, config)
    if changed:
        raise KdstError(f"{path} was trained with another config ({', '.join(changed)} differ): "
                        f"remove {path.parent} to start afresh, or train into another --exp-dir")


# --- distributed -------------------------------------------------------------------

def init_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (one process: 0, 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def any_rank(flags: torch.Tensor) -> list[bool]:
    """Each flag True on every rank if it is True on any: ranks must take the same branch or DDP hangs.
    One all-reduce for all of them, and one wait for the device."""
    flags = flags.float()
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [flag > 0 for flag in flags.tolist()]


# --- one batch, one epoch ---------------------------------------------------------------

def loader_workers(data: DataConfig, device: torch.device) -> int:
    """``data.num_workers``, or by default 2 on a GPU (batches are built while it computes) and 0 on
    the CPU (there worker processes only take cores from the training threads)."""
    if data.num_workers is not None:
        return data.num_workers
    return 2 if device.type == "cuda" else 0


def to_device(batch: dict, device: torch.device) -> dict:
    # non_blocking: from the loader's pinned memory the copy to a GPU overlaps the work queued before it
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def compute_loss(model, batch: dict, config: dict, device: torch.device) -> tuple[torch.Tensor, dict]:
    """The model's ``(loss, stats)`` for one batch; SpecAugment here, in this process, on the device."""
    batch = to_device(batch, device)
    specaug = config.train.specaugment
    if specaug and model.training and batch["src"].dim() == 3:
        batch["clean_src"] = batch["src"]  # what an online teacher hears (noisy student: clean for the teacher)
        batch["src"] = spec_augment(batch["src"], batch["src_lengths"], specaug)
    bf16 = device.type == "cuda" and config.train.bf16
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return model(batch)


class RunningStats:
    """Sums of the models' stats, weighted by their ``ntokens``, kept on the device until read:
    reading them waits for the device, so it happens once per log line, not once per batch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.keys: list[str] = []
        self.sums: torch.Tensor | None = None  # value * ntokens per key, then ntokens

    def add(self, stats: dict[str, torch.Tensor], counts: torch.Tensor | None = None) -> None:
        """Add one batch's stats; ``counts`` (a 0-dim bool tensor) False leaves the batch out."""
        if self.sums is None:
            self.keys = [key for key in stats if key != "ntokens"]
            self.sums = torch.zeros(len(self.keys) + 1, dtype=torch.float64, device=self.device)
        n = stats["ntokens"].double()
        row = torch.stack([*(stats[key].double() * n for key in self.keys), n])
        if counts is not None:  # where(), not a product: a non-finite value times 0 is still NaN
            row = torch.where(counts, row, 0.0)
        self.sums += row

    def read(self) -> tuple[dict[str, float], float]:
        """Token-weighted means over every rank, and the number of tokens; then start afresh."""
        if self.sums is None:
            return {}, 0.0
        if dist.is_initialized():
            dist.all_reduce(self.sums)
        *sums, ntokens = self.sums.tolist()
        self.sums = None
        return {key: total / max(ntokens, 1.0) for key, total in zip(self.keys, sums)}, ntokens


def train_one_epoch(model, optimizer, scheduler, dataset, batches: list[list[str]], progress: Progress,
                    config: dict, device: torch.device, writer, stop_requested) -> bool:
    """Train from ``progress.batch_in_epoch`` to the end of the epoch; False if stopped early.

    Nothing in a micro-batch waits for the device: the loss is checked for being finite
    once per optimiser step (one all-reduce with the stop request), and the stats are read
    once per log line.
    """
    train = config.train
    accum, max_steps, log_interval = train.accum_grad, train.max_steps, train.log_interval
    model.train()
    bar = tqdm(total=len(batches), initial=progress.batch_in_epoch, desc=f"epoch {progress.epoch}",
               disable=not sys.stderr.isatty(), mininterval=1.0)
    started, steps_at_start = time.monotonic(), progress.step
    running, grad_norm = RunningStats(device), None
    step_ids: list[list[str]] = []  # utterances of each micro-batch of this step, to name in an error
    step_bad: list[torch.Tensor] = []  # and whether its loss was not finite, on the device
    loader = batch_loader(dataset, batches, start=progress.batch_in_epoch,
                          num_workers=loader_workers(config.data, device), device=device)
    scheduled = getattr(getattr(model, "module", model), "set_step", None)  # KD schedules (kdst.train.schedule)
    for batch in loader:
        if scheduled is not None:
            scheduled(progress.step)
        micro = progress.batch_in_epoch % accum
        last_micro = micro == accum - 1 or progress.batch_in_epoch == len(batches) - 1
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss, stats = compute_loss(model, batch, config, device)
            finite = torch.isfinite(loss.detach())
            # A non-finite loss gives non-finite gradients; they are dropped with the step's below.
            (loss / accum).backward()
        running.add(stats, finite)
        step_ids.append(batch["ids"])
        step_bad.append(~finite)
        progress.batch_in_epoch += 1
        bar.update()
        if not last_micro:
            continue
        *bad, stop = any_rank(torch.stack([*step_bad, torch.tensor(stop_requested(), device=device)]))
        if any(bad):
            handle_bad_loss([ids for ids, b in zip(step_ids, bad) if b], progress, train.nan)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip)
            optimizer.step()
        step_ids, step_bad = [], []
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        if progress.step % log_interval == 0:
            means, ntokens = running.read()
            rate = (progress.step - steps_at_start) / max(time.monotonic() - started, 1e-9)
            log_stats(writer, progress, {**means, "ntokens": ntokens / log_interval,
                                         "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                                         "lr": scheduler.get_last_lr()[0], "steps_per_s": rate})
        if stop or (max_steps and progress.step >= max_steps):
            bar.close()
            return False
    bar.close()
    return True


def handle_bad_loss(batches: list[list[str]], progress: Progress, policy: str) -> None:
    """A non-finite loss in the step (on some rank): stop, or drop the step's gradients and go on."""
    utterances = " | ".join(" ".join(ids) for ids in batches) or "(on another rank)"
    message = f"non-finite loss at epoch {progress.epoch}, step {progress.step}; utterances of the batch: {utterances}"
    if policy == "stop":
        raise KdstError(message + " (train.nan: stop)")
    log.warning("%s: step skipped (train.nan: skip)", message)


def log_stats(writer, progress: Progress, stats: dict[str, float]) -> None:
    """``ntokens`` is per optimiser step (all ranks); the losses and accuracy are per token since the last line."""
    log.info("epoch %d step %d: %s", progress.epoch, progress.step,
             " ".join(f"{k}={v:.4g}" for k, v in stats.items()))
    if writer is not None:
        for key, value in stats.items():
            writer.add_scalar(f"train/{key}", value, progress.step)


@torch.no_grad()
def validate(model, dataset, config: dict, device: torch.device) -> dict[str, float]:
    """Token-weighted validation statistics, summed over ranks; read from the device once, at the end."""
    model.eval()
    batches = make_batches(dataset.src_lengths, config.data.max_units, shuffle=False)
    if dist.is_initialized():
        batches = batches[dist.get_rank()::dist.get_world_size()]
    # nll * n, acc * n, n, n where acc is known: a fixed layout, so a rank left without a batch
    # (fewer batches than ranks) still joins the all-reduce instead of hanging the others
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for batch in batch_loader(dataset, batches, num_workers=loader_workers(config.data, device), device=device):
        stats = compute_loss(model, batch, config, device)[1]
        n, acc = stats["ntokens"].double(), stats.get("acc")  # a transducer has no token accuracy
        known = n if acc is not None else torch.zeros_like(n)
        totals += torch.stack([stats["nll"].double() * n, (acc.double() if acc is not None else 0.0) * known,
                               n, known])
    if dist.is_initialized():
        dist.all_reduce(totals)
    nll, acc, n, known = totals.tolist()
    result = {"nll": nll / max(n, 1.0), "ntokens": n}
    if known > 0:
        result["acc"] = acc / known
    return result


# --- the whole run ---------------------------------------------------------------------

def warn_if_warmup_outlasts_training(config: TrainingConfig, batches_per_epoch: int) -> None:
    """A schedule whose warmup is longer than the whole run never reaches its learning rate:
    the mini MT config on a small corpus trained 80 updates of a 200-step warmup, to BLEU 0."""
    train, warmup = config.train, config.optim.warmup_steps
    updates = train.epochs * math.ceil(batches_per_epoch / train.accum_grad)  # an epoch's last batch always steps
    if train.max_steps:
        updates = min(updates, train.max_steps)
    if updates < warmup:
        log.warning("kdst train: %d optimiser updates in all, fewer than optim.warmup_steps %d: "
                    "the learning rate never reaches its peak", updates, warmup)


def epoch_batches(train_set, config: TrainingConfig, epoch: int, rank: int, world_size: int) -> list[list[str]]:
    """This rank's batches of ``epoch``: a function of seed and epoch, so a resumed run gets the same ones."""
    return shard_batches(make_batches(train_set.src_lengths, config.data.max_units, max_items=config.data.max_items,
                                      seed=config.train.seed, epoch=epoch),
                         rank, world_size)


def run(config: TrainingConfig, exp_dir: str | Path, *, resume: bool = False) -> Progress:
    """Train as configured; checkpoints go to ``exp_dir`` (rank 0 writes)."""
    exp_dir = Path(exp_dir)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts its workers in sessions of their own: killed outright, it would leave
        # them training (kdst launch's guard stops torchrun's process group, not theirs).
        die_with_parent(signal.SIGTERM)
    rank, world_size, device = init_distributed()
    if rank != 0:  # one log for the run: the other ranks speak only of problems
        logging.getLogger("kdst").setLevel(logging.WARNING)
    train = config.train
    torch.manual_seed(train.seed)
    train_set, valid_set, sizes = build_datasets(config.data, train.seed)
    with contextlib.ExitStack() as held:  # the lock, the writer, the signal handlers: given back however it ends
        if rank == 0:  # the other ranks are the same run
            # One writer per experiment: a second trainer would overwrite this one's checkpoints. The kernel
            # releases the lock when this process dies. The exp dir is made only now that config and data are good.
            exp_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_lock(exp_dir / ".lock", f"{exp_dir} is being trained"))
            remove_stale_temporaries(exp_dir)  # checkpoints a killed run was writing
        config = replace(config, model=replace(config.model, **sizes))
        model = build_model(config.model).to(device)
        # With a kd section the loss comes from the student and a teacher; checkpoints hold the student as
        # "model" and, as "kd", what the loss model trains besides it (frame-level KD's projection).
        loss_model = model
        if config.kd:
            if config.data.nbest_targets:
                raise KdstError("a kd section and data.nbest_targets cannot be combined "
                                "(one teacher signal at a time)")
            loss_model, train_set = setup_kd(config.kd, model, train_set, config.data, device)
        kd_params = kd_parameters(loss_model, model)
        optimizer = torch.optim.AdamW([*model.parameters(), *kd_params.values()], lr=config.optim.lr,
                                      betas=config.optim.betas, weight_decay=config.optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.optim))
        progress = Progress()
        last = exp_dir / "last.pt"
        if last.is_file() and not resume:
            raise KdstError(f"{exp_dir} has a training run already: pass --resume to continue it, or remove it")
        if resume and last.is_file():
            saved = read_checkpoint(last)
            if "progress" not in saved:
                raise KdstError(f"{last}: not a training checkpoint (no progress in it)")
            check_resumable(saved_config(saved, last), config, last)
            load_weights(model, saved["model"], last)
            load_kd_parameters(kd_params, saved.get("kd", {}), last)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            progress = Progress(**saved["progress"])
            set_rng_state(saved["rng"][rank] if isinstance(saved["rng"], list) else saved["rng"])
            log.info("resumed from %s: epoch %d, batch %d, step %d", last, progress.epoch, progress.batch_in_epoch,
                     progress.step)
        elif train.init:  # fine-tuning: start from another run's weights, with a fresh optimiser
            init = read_checkpoint(train.init, "checkpoint to initialise from (train.init)")
            load_weights(model, init["model"], train.init)
            log.info("initialised from %s", train.init)
        elif train.init_parts:  # pre-trained parts (an ASR encoder, an MT decoder), the rest afresh
            for part in train.init_parts:
                init = read_checkpoint(part.checkpoint, "checkpoint to initialise from (train.init_parts)")
                copied = load_submodules(model, init["model"], part.checkpoint, part.modules)
                log.info("initialised %s (%d tensors) from %s", ", ".join(part.modules), copied, part.checkpoint)
        if rank == 0:
            atomic_write_text(exp_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
            log.info("model: %.2fM parameters; %d training utterances; %d process(es) on %s",
                     sum(p.numel() for p in model.parameters()) / 1e6, len(train_set.ids), world_size, device)
            warn_if_warmup_outlasts_training(config, len(epoch_batches(train_set, config, 1, rank, world_size)))
        ddp_model = DistributedDataParallel(loss_model) if world_size > 1 else loss_model
        writer = None
        if rank == 0:
            # Everything logged after the checkpoint's step is logged again by this run: tensorboard hides
            # the earlier run's copy (steps >= purge_step), so each step has one point.
            writer = held.enter_context(SummaryWriter(str(exp_dir / "tensorboard"), purge_step=progress.step + 1))
        signals: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):  # finish the step, save, stop
            # in-process callers (tests, notebooks) get their handlers back
            held.callback(signal.signal, signum, signal.signal(signum, lambda s, f: signals.append(s)))
        requeued = False

        def checkpoint(path: Path) -> None:
            rngs = [None] * world_size
            if world_size > 1:
                dist.all_gather_object(rngs, rng_state())
            else:
                rngs = [rng_state()]
            if rank == 0:
                extra = {"kd": {name: p.detach().clone() for name, p in kd_params.items()}} if kd_params else {}
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "progress": asdict(progress), "rng": rngs,
                             "config": config.to_dict(), **extra}, path)

        while progress.epoch <= train.epochs:
            if hasattr(train_set, "set_epoch"):  # N-best targets drawn per epoch
                train_set.set_epoch(progress.epoch)
            batches = epoch_batches(train_set, config, progress.epoch, rank, world_size)
            finished = train_one_epoch(ddp_model, optimizer, scheduler, train_set, batches, progress, config,
                                       device, writer, lambda: bool(signals))
            if not finished:
                checkpoint(last)
                why = f"signal {signals[0]}" if signals else f"train.max_steps={train.max_steps}"
                log.info("stopped at epoch %d, step %d (%s); continue with --resume", progress.epoch,
                         progress.step, why)
                if signals and signals[0] == signal.SIGUSR1 and rank == 0 and os.environ.get("SLURM_JOB_ID"):
                    # Said first: Slurm stops every process of the job as soon as it requeues it.
                    log.info("requeueing Slurm job %s; its next run continues from %s", os.environ["SLURM_JOB_ID"],
                             last)
                    requeued = requeue()
                break
            stats = validate(model, valid_set, config, device)
            progress.history[progress.epoch] = stats["nll"]
            shown = [key for key in ("nll", "acc") if key in stats]
            log.info("epoch %d done: validation %s", progress.epoch,
                     " ".join(f"{key}={stats[key]:.4f}" for key in shown))
            if writer is not None:
                for key in shown:
                    writer.add_scalar(f"valid/{key}", stats[key], progress.step)
            epoch = progress.epoch
            progress.epoch, progress.batch_in_epoch = epoch + 1, 0
            checkpoint(exp_dir / f"epoch-{epoch}.pt")
            checkpoint(last)
            if rank == 0:
                prune(exp_dir, progress.history, train.keep_best)
    if world_size > 1:  # left alive, the process group's threads abort the interpreter at exit
        dist.barrier()
        dist.destroy_process_group()
    if signals:
        raise TrainingStopped(signals[0], last, requeued)
    return progress
