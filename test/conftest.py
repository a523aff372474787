"""Shared fixtures: real audio files and Kaldi data dirs built from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (test/losses/test_triton_kernels.py).
# It must be chosen before triton is first imported, which decorates tl's own helpers one way
# or the other; torch does not import triton, so this is early enough.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import write_wav  # noqa: E402
from kdst.data.kaldi_dir import write_data_dir  # noqa: E402

@pytest.fixture
def segmented_dir(tmp_path: Path) -> Path:
    """A valid data dir: two 3 s talks, two segments each, text + text.en + text.de."""
    files: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "segments", "utt2spk", "text", "text.en",
                                                        "text.de")}
    for talk in (1, 2):
        rec = f"ted_{talk:05d}"
        files["wav.scp"][rec] = str(write_wav(tmp_path / "wav" / f"ted_{talk}.wav", 3.0, seed=talk))
        for start, end in ((0.2, 1.4), (1.6, 2.9)):
            utt = f"{rec}_{int(start * 1000):07d}_{int(end * 1000):07d}"
            files["segments"][utt] = f"{rec} {start:.3f} {end:.3f}"
            files["utt2spk"][utt] = rec
            files["text.en"][utt] = f"the dog sees the cat {talk}"
            files["text.de"][utt] = f"der Hund sieht die Katze {talk}"
            files["text"][utt] = files["text.de"][utt]
    data = tmp_path / "data"
    write_data_dir(data, files)
    return data


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    """A valid data dir without segments: one file per utterance."""
    files: dict[str, dict[str, str]] = {n: {} for n in ("wav.scp", "utt2spk", "text")}
    for i in range(3):
        utt = f"spk1-utt{i}"
        files["wav.scp"][utt] = str(write_wav(tmp_path / "wav" / f"{i}.wav", 1.0 + 0.5 * i, seed=i))
        files["utt2spk"][utt] = "spk1"
        files["text"][utt] = f"hello number {i}"
    data = tmp_path / "plain"
    write_data_dir(data, files)
    return data



@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only adds waiting, a lot of it on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm cluster on localhost (test/slurm_cluster.py), shared by the session."""
    import shutil

    from slurm_cluster import start_cluster, stop_cluster, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster()
    yield cluster
    stop_cluster(cluster)
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The session's Slurm cluster, with SLURM_CONF set for this test (and its subprocesses); no job left over."""
    from slurm_cluster import cancel_all

    for var in [v for v in os.environ if v.startswith("SLURM_") and v not in slurm_cluster.env]:
        monkeypatch.delenv(var)  # from an outer Slurm job
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    yield slurm_cluster
    cancel_all(slurm_cluster)
