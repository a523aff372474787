"""The trainer: learning, checkpoints, exact resume, DDP equivalence, bad losses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_mt_task, write_config

from kdst.data.dataset import make_batches, TextDataset
from kdst.data.files import exclusive_lock, this_host
from kdst.data.tokenizer import load_tokenizer
from kdst.errors import KdstError
from kdst.models.encoder_decoder import EncoderDecoder
from kdst.models.loading import load_model
from kdst.train.checkpoint import average, epoch_checkpoints
from kdst.train.trainer import load_config, run, warn_if_warmup_outlasts_training


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory) -> Path:
    return make_mt_task(tmp_path_factory.mktemp("mt"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def weights(exp_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(exp_dir / "last.pt", weights_only=False)["model"]


def test_learns_and_keeps_checkpoints(mt_data: Path, tmp_path: Path):
    progress = run(load_config(write_config(mt_data, tmp_path / "c.yaml")), tmp_path / "exp")
    assert progress.epoch == 4 and progress.batch_in_epoch == 0
    history = progress.history
    assert history[3] < history[1], f"validation loss should fall: {history}"
    kept = set(sorted(history, key=history.get)[:2]) | {2, 3}  # keep_best=2, and always the last 2
    assert set(epoch_checkpoints(tmp_path / "exp")) == kept
    saved = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert saved["model"]["vocab_size"] == len(load_tokenizer(mt_data / "tok_de").tokens)
    assert (tmp_path / "exp" / "tensorboard").is_dir()

    avg = average(tmp_path / "exp", 2, by="last")
    model, config = load_model(avg)
    assert isinstance(model, EncoderDecoder) and not model.training
    last = [torch.load(p, weights_only=False)["model"] for e, p in sorted(epoch_checkpoints(tmp_path / "exp").items())][-2:]
    name = "decoder.output.weight"
    torch.testing.assert_close(model.state_dict()[name], (last[0][name] + last[1][name]) / 2)
    with pytest.raises(KdstError, match=f"only {len(kept)} epoch checkpoint"):
        average(tmp_path / "exp", 5)


def test_existing_run_needs_resume(mt_data: Path, tmp_path: Path):
    config_path = write_config(mt_data, tmp_path / "c.yaml", epochs=1)
    before = signal.getsignal(signal.SIGINT)
    run(load_config(config_path), tmp_path / "exp")
    assert signal.getsignal(signal.SIGINT) is before, "the caller's Ctrl-C handler is restored"
    with pytest.raises(KdstError, match="pass --resume"):
        run(load_config(config_path), tmp_path / "exp")


def test_interrupted_and_resumed_equals_uninterrupted(mt_data: Path, tmp_path: Path):
    config_path = write_config(mt_data, tmp_path / "c.yaml", epochs=2)
    run(load_config(config_path), tmp_path / "straight")

    n_batches = len(make_batches(TextDataset(mt_data / "train", load_tokenizer(mt_data / "tok_en"),
                                             load_tokenizer(mt_data / "tok_de")).src_lengths, 1200))
    stop_at = n_batches + 2  # inside the second epoch, so the sampler position matters
    stopped = run(load_config(config_path, [f"train.max_steps={stop_at}"]), tmp_path / "resumed")
    assert (stopped.epoch, stopped.batch_in_epoch, stopped.step) == (2, 2, stop_at)
    run(load_config(config_path, ["train.max_steps=0"]), tmp_path / "resumed", resume=True)

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name  # bit for bit: dropout RNG restored too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(mt_data: Path, tmp_path: Path):
    # No dropout: the ranks draw from different RNG streams.
    config = yaml.safe_load(write_config(mt_data, tmp_path / "c.yaml", epochs=1).read_text())
    for part in ("encoder", "decoder"):
        config["model"][part]["dropout"] = 0.0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    dataset = TextDataset(mt_data / "train", load_tokenizer(mt_data / "tok_en"), load_tokenizer(mt_data / "tok_de"))
    assert len(make_batches(dataset.src_lengths, 1200)) % 2 == 0, "the single process must see the same batches"

    train = [sys.executable, "-m", "kdst.cli", "train", "--config", str(tmp_path / "c.yaml")]
    one = subprocess.run([*train, "--exp-dir", str(tmp_path / "one"), "--set", "train.accum_grad=2"],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "kdst.cli", "train", "--config", str(tmp_path / "c.yaml"),
                          "--exp-dir", str(tmp_path / "two")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert "2 process(es)" in two.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_non_finite_loss_names_the_utterances(mt_data: Path, tmp_path: Path, monkeypatch, caplog, policy: str):
    forward = EncoderDecoder.forward

    def poisoned(self, batch):
        loss, stats = forward(self, batch)
        return (loss * float("nan"), stats) if "utt005" in batch["ids"] else (loss, stats)

    monkeypatch.setattr(EncoderDecoder, "forward", poisoned)
    config = load_config(write_config(mt_data, tmp_path / "c.yaml", epochs=1, nan=policy))
    if policy == "stop":
        with pytest.raises(KdstError, match=r"non-finite loss at epoch 1.*utt005"):
            run(config, tmp_path / "exp")
    else:
        with caplog.at_level("WARNING"):
            run(config, tmp_path / "exp")
        assert any("utt005" in r.message and "skipped" in r.message for r in caplog.records)
        assert all(torch.isfinite(w).all() for w in weights(tmp_path / "exp").values())


def test_resume_refuses_another_model_config(mt_data: Path, tmp_path: Path):
    config_path = write_config(mt_data, tmp_path / "c.yaml", epochs=1)
    run(load_config(config_path), tmp_path / "exp")
    with pytest.raises(KdstError, match=r"was trained with another config \(model.d_model differ\)"):
        run(load_config(config_path, ["model.d_model=64"]), tmp_path / "exp", resume=True)
    # the length of training may change
    assert run(load_config(config_path, ["train.epochs=2"]), tmp_path / "exp", resume=True).epoch == 3


def test_exp_dir_is_made_after_the_checks_and_locked_for_the_run(mt_data: Path, tmp_path: Path, caplog):
    config_path, exp = write_config(mt_data, tmp_path / "c.yaml", epochs=1), tmp_path / "exp"
    with pytest.raises(KdstError):
        run(load_config(config_path, [f"data.train={tmp_path / 'nowhere'}"]), exp)
    assert not exp.exists(), "a run refused for its data leaves no exp dir behind"

    exp.mkdir()
    with exclusive_lock(exp / ".lock", "held by this test"):  # as another trainer would
        with pytest.raises(KdstError, match=rf"^{exp} is being trained by pid {os.getpid()} on host "
                                             rf"{this_host()} \({exp}/\.lock\)$"):
            run(load_config(config_path), exp)

    # what a killed run left while writing a checkpoint goes; the lock was given back, so this run starts
    stale = exp / f".last.pt.{dead_pid()}@{this_host()}.abcdefgh.tmp"
    stale.write_bytes(b"half a checkpoint")
    with caplog.at_level("WARNING", logger="kdst.train"):
        run(load_config(config_path, ["train.max_steps=1"]), exp)
    assert not stale.exists() and (exp / "last.pt").is_file()
    # max_steps=1 against warmup_steps 5 in write_config
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "kdst train: 1 optimiser updates in all, fewer than optim.warmup_steps 5: "
        "the learning rate never reaches its peak"]


@pytest.mark.parametrize("overrides, updates", [
    (["train.epochs=2", "train.accum_grad=2"], 46),  # 45 batches an epoch: the last one steps on its own
    (["train.epochs=2", "train.max_steps=30"], 30),
    (["train.epochs=10"], None),  # 450 updates: warmup_steps 200 reached
])
def test_warning_when_warmup_outlasts_training(mt_data: Path, tmp_path: Path, caplog, overrides, updates):
    config = load_config(write_config(mt_data, tmp_path / "c.yaml"), ["optim.warmup_steps=200", *overrides])
    with caplog.at_level("WARNING", logger="kdst.train"):
        warn_if_warmup_outlasts_training(config, batches_per_epoch=45)
    expected = [] if updates is None else [f"kdst train: {updates} optimiser updates in all, fewer than "
                                           f"optim.warmup_steps 200: the learning rate never reaches its peak"]
    assert [r.getMessage() for r in caplog.records] == expected


def test_resumed_run_logs_each_step_once_to_tensorboard(mt_data: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp, config_path = tmp_path / "exp", write_config(mt_data, tmp_path / "c.yaml", epochs=3)
    run(load_config(config_path, ["train.max_steps=3"]), exp)  # logs steps 1-3, saves at 3
    saved_at_3 = (exp / "last.pt").read_bytes()
    run(load_config(config_path, ["train.max_steps=6"]), exp, resume=True)  # logs 4-6
    # as if that run had been killed before saving: the next one redoes steps 4-6
    (exp / "last.pt").write_bytes(saved_at_3)
    run(load_config(config_path, ["train.max_steps=6"]), exp, resume=True)

    assert len(list((exp / "tensorboard").glob("events.*"))) == 3
    events = EventAccumulator(str(exp / "tensorboard")).Reload()
    for tag in ("train/loss", "train/lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4, 5, 6], tag
