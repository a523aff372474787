"""The trainer: learning, checkpoints, exact resume, DDP equivalence, bad losses."""

from __future__ import annotations

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
from kdst.data.tokenizer import load_tokenizer
from kdst.errors import KdstError
from kdst.models.encoder_decoder import EncoderDecoder
from kdst.models.loading import load_model
from kdst.train.checkpoint import average, epoch_checkpoints
from kdst.train.trainer import load_config, run


@pytest.fixture(scope="module")
def mt_data(tmp_path_factory) -> Path:
    return make_mt_task(tmp_path_factory.mktemp("mt"))


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
