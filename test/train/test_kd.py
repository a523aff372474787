"""Word-level KD in training: online teacher, top-k and sampled caches, alignment by utterance id."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_mt_task, write_config
from kdst.config import parse_kd
from kdst.data.dataset import collate
from kdst.data.teacher_cache import TeacherCache
from kdst.teacher.topk import write_cache
from kdst.errors import KdstError
from kdst.losses import word_kd_loss
from kdst.models import build_model
from kdst.train.kd import setup_distillation
from kdst.train.trainer import build_datasets, load_config, run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A tiny MT task and a teacher trained on it for one epoch."""
    root = make_mt_task(tmp_path_factory.mktemp("kd"))
    run(load_config(write_config(root, root / "teacher.yaml", epochs=1)), root / "teacher")
    return {"root": root, "teacher": root / "teacher" / "epoch-1.pt"}


def student_setup(task: dict, kd: dict, seed: int = 0):
    config = load_config(write_config(task["root"], task["root"] / "student.yaml"))
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(seed)
    student = build_model(replace(config.model, **sizes)).eval()
    loss_model, kd_set = setup_distillation(parse_kd(kd, config.model), student, train_set, config.data, CPU)
    return student, loss_model, kd_set


def kd_term(loss_model, kd_set, ids: list[str]) -> float:
    batch = collate([kd_set[u] for u in ids])
    with torch.no_grad():
        logits, targets, *_ = loss_model.student.decoder_logits(batch)
        return float(loss_model.kd_term(logits, targets, batch)[0])


def test_online_teacher_is_aligned_with_the_students_batch(task):
    """Per utterance alone vs in a batch, in two orders: the teacher sees each utterance's own transcript."""
    student, loss_model, kd_set = student_setup(task, {"teacher": str(task["teacher"]), "weight": 0.5})
    teacher = loss_model.teacher
    ids = kd_set.ids[:6]
    sums, counts = 0.0, 0
    for utt in ids:  # the oracle: one utterance at a time, the teacher given this utterance's source
        alone = collate([kd_set[utt]])
        with torch.no_grad():
            s_logits, targets, *_ = student.decoder_logits(alone)
            t_logits = teacher.decoder_logits({"src": alone["teacher_src"], "src_lengths": alone["teacher_src_lengths"],
                                               "tgt": alone["tgt"], "tgt_lengths": alone["tgt_lengths"]})[0]
        mask = targets != 0
        sums += float(word_kd_loss(s_logits[mask], t_logits[mask], reduction="sum"))
        counts += int(mask.sum())
    assert kd_term(loss_model, kd_set, ids) == pytest.approx(sums / counts, rel=1e-5)
    assert kd_term(loss_model, kd_set, ids[::-1]) == pytest.approx(sums / counts, rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())
    loss_model.train()
    assert loss_model.student.training and not teacher.training


def test_full_vocabulary_cache_equals_the_online_teacher(task, tmp_path):
    """k = V: the cached top-k is the whole distribution, so the KD term equals the online one (float16 storage)."""
    root = task["root"]
    vocab = len((root / "tok_de" / "tokens.txt").read_text().splitlines())
    write_cache(task["teacher"], root / "train", tmp_path / "cache", k=vocab, device="cpu")
    kd = {"teacher": str(task["teacher"]), "weight": 0.5, "temperature": 2.0}
    _, online, online_set = student_setup(task, kd)
    _, cached, cached_set = student_setup(task, {**kd, "cache": str(tmp_path / "cache")})
    assert cached.teacher is None
    ids = online_set.ids[10:20]
    assert kd_term(cached, cached_set, ids[::-1]) == pytest.approx(kd_term(online, online_set, ids), rel=2e-3)


def test_cache_must_match_the_training_run(task, tmp_path):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "cache", k=4, device="cpu")
    cache = TeacherCache(tmp_path / "cache")
    assert cache.fingerprint["k"] == 4 and cache.fingerprint["text"] == "text"
    assert cache.fingerprint["source_text"] == "text.en" and len(cache.fingerprint["targets"]) == 64
    assert cache.bytes_per_token() == 4 * (2 + 2)
    # Another target text (a Seq-KD student) than the cache was made for: its content differs.
    config = load_config(write_config(root, root / "s.yaml"), ["data.text=text.en"])
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes))
    with pytest.raises(KdstError, match=r"does not match this training run: targets \(the token ids of "
                                        r".*/train/text.en differ\) \(re-run the top-k stage\)$"):
        setup_distillation(parse_kd({"cache": str(tmp_path / "cache")}, config.model), student, train_set,
                           config.data, CPU)
    # Another teacher checkpoint than the one that made the cache.
    other = tmp_path / "other.pt"
    saved = torch.load(task["teacher"], weights_only=False)
    saved["model"] = {k: v + 1 for k, v in saved["model"].items()}
    torch.save(saved, other)
    with pytest.raises(KdstError, match=r"does not match this training run: teacher \(not .*other.pt\) \("):
        student_setup(task, {"cache": str(tmp_path / "cache"), "teacher": str(other)})


def test_teacher_with_another_vocabulary_is_an_error(task, tmp_path):
    saved = torch.load(task["teacher"], weights_only=False)
    saved["config"]["data"]["tokenizer"] = str(task["root"] / "tok_en")
    torch.save(saved, tmp_path / "t.pt")
    with pytest.raises(KdstError, match="word-level KD needs one vocabulary"):
        student_setup(task, {"teacher": str(tmp_path / "t.pt")})


def test_sampled_cache_counts_and_loss(task, tmp_path):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "sampled", k=6, mode="sampled", device="cpu")
    cache = TeacherCache(tmp_path / "sampled")
    indices, counts = cache.get(cache.ids[0])
    assert (counts.sum(1) == 6).all()  # k draws per target position
    for row_ids, row_counts in zip(indices, counts):
        drawn = row_ids[row_counts > 0]
        assert len(set(drawn.tolist())) == len(drawn)  # distinct ids, each with its count
    # Same seed, same draws, whatever else is in the data dir.
    write_cache(task["teacher"], root / "train", tmp_path / "again", k=6, mode="sampled", device="cpu")
    assert (TeacherCache(tmp_path / "again").get(cache.ids[0])[1] == counts).all()
    _, loss_model, kd_set = student_setup(task, {"cache": str(tmp_path / "sampled"), "weight": 1.0})
    assert loss_model.sampled
    batch = collate([kd_set[u] for u in kd_set.ids[:4]])
    logits, targets, *_ = loss_model.student.decoder_logits(batch)
    kd, _ = loss_model.kd_term(logits, targets, batch)
    # the oracle: cross-entropy to the empirical distribution of the draws, minus its entropy
    mask = targets != 0
    logp = logits[mask].float().log_softmax(-1)
    idx, cnt = batch["teacher_topk_indices"][mask], batch["teacher_topk_values"][mask]
    q = cnt / cnt.sum(1, keepdim=True)
    plogq = torch.where(q > 0, q * q.clamp_min(1e-30).log(), 0.0).sum(1)
    expected = (plogq - (q * logp.gather(1, idx)).sum(1)).mean()
    assert float(kd.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_training_with_the_online_teacher_saves_only_the_student(task, tmp_path):
    root = task["root"]
    path = write_config(root, tmp_path / "c.yaml", epochs=1)
    config = yaml.safe_load(path.read_text())
    config["kd"] = {"teacher": str(task["teacher"]), "weight": 0.7, "temperature": 1.0}
    path.write_text(yaml.safe_dump(config))
    run(load_config(path), tmp_path / "exp")
    saved = torch.load(tmp_path / "exp" / "last.pt", weights_only=False)
    teacher_keys = set(torch.load(task["teacher"], weights_only=False)["model"])
    assert set(saved["model"]) == teacher_keys  # same architecture here, but one model's worth of weights
    assert saved["config"]["kd"]["weight"] == 0.7
    events = list((tmp_path / "exp" / "tensorboard").glob("events.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"train/kd", "train/ce", "train/loss"} <= set(tags)
