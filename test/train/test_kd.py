"""Word-level KD in training: online teacher, top-k and sampled caches, alignment by utterance id."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_mt_task, write_config
from kdst.config import parse_kd
from kdst.data.dataset import collate
from kdst.data.teacher_cache import TeacherCache
from kdst.teacher.topk import summary, write_cache
from kdst.errors import KdstError
from kdst.losses import word_kd_loss
from kdst.models import build_model
from kdst.data.tokenizer import tokenizer_fingerprint
from kdst.models.encoder_decoder import decoder_io
from kdst.models.teacher import load_teacher
from kdst.train.kd import TeacherInputs, WordKD, setup_distillation
from kdst.train.trainer import build_datasets, load_config, run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A tiny MT task and a teacher trained on it for one epoch."""
    root = make_mt_task(tmp_path_factory.mktemp("kd"))
    run(load_config(write_config(root, root / "teacher.yaml", epochs=1)), root / "teacher")
    return {"root": root, "teacher": root / "teacher" / "epoch-1.pt"}


@pytest.fixture(scope="module")
def sharp(task, tmp_path_factory) -> dict:
    """The task with a confident teacher: the one-epoch teacher's output layer times 8, logits spread over
    ~20 like a trained model's (the one-epoch teacher's over ~2.5 are nearly flat at any temperature)."""
    saved = torch.load(task["teacher"], weights_only=False)
    for key in ("decoder.output.weight", "decoder.output.bias"):
        saved["model"][key] = saved["model"][key] * 8.0
    path = tmp_path_factory.mktemp("sharp") / "teacher.pt"
    torch.save(saved, path)
    return {**task, "teacher": path}


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
    assert cache.bytes_per_token() == 4 * (2 + 2) + 4  # and the float32 rest
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


# ---------------------------------------------------------------- issue 17: exact word-level KD


def kd_gradient(loss_model, kd_set, ids: list[str]) -> torch.Tensor:
    """d(KD summed over tokens) / d(student logits) at the counted tokens, (tokens, V)."""
    batch = collate([kd_set[u] for u in ids])
    with torch.no_grad():
        logits, targets, *_ = loss_model.student.decoder_logits(batch)
    logits.requires_grad_(True)
    mask = targets != 0
    kd, _ = loss_model.kd_term(logits, targets, batch)
    (grad,) = torch.autograd.grad(kd * mask.sum(), logits)
    return grad[mask]


def test_sampled_cache_at_t2_gives_the_gradient_of_full_kd_at_t2(sharp, tmp_path):
    """The review's case: T = 2.  Draws from softmax(z / 2) give, up to sampling noise, the gradient of full KD
    at T = 2; the draws at T = 1 that kdst used to make whatever the temperature give a biased one."""
    root = sharp["root"]
    vocab = len((root / "tok_de" / "tokens.txt").read_text().splitlines())
    _, online, online_set = student_setup(sharp, {"teacher": str(sharp["teacher"]), "weight": 1.0, "temperature": 2.0})
    ids = online_set.ids[:8]
    full = kd_gradient(online, online_set, ids)
    # The gradient is linear in the counts: its mean over caches of 8 seeds is that of 8 k draws.
    grads = {1.0: [], 2.0: []}
    for seed in range(8):
        for temperature in grads:
            cache = tmp_path / f"t{temperature:g}_{seed}"
            write_cache(sharp["teacher"], root / "train", cache, k=vocab, mode="sampled", device="cpu", seed=seed,
                        temperature=temperature)
            # the T = 1 caches with a student at T = 2 is what kdst did before (training now refuses it)
            model = WordKD(online.student, None, weight=1.0, temperature=2.0, sampled=True)
            grads[temperature].append(kd_gradient(model, TeacherInputs(online_set.base, cache=TeacherCache(cache)),
                                                  ids))
    # relative L2 errors: 8 x V draws leave ~10% noise; a teacher at the wrong temperature, ~75%
    err_2, err_1 = (float((torch.stack(grads[t]).mean(0) - full).norm() / full.norm()) for t in (2.0, 1.0))
    assert TeacherCache(tmp_path / "t2_0").fingerprint["temperature"] == 2.0
    _, sampled, _ = student_setup(sharp, {"cache": str(tmp_path / "t2_0"), "weight": 1.0, "temperature": 2.0})
    assert sampled.sampled and sampled.temperature == 2.0
    assert err_2 < 0.2 and err_1 > 0.5


def test_a_cache_made_at_another_temperature_is_refused(task, tmp_path):
    root = task["root"]
    with pytest.raises(KdstError, match=r"^--temperature must be a finite number > 0, not 0.0$"):
        write_cache(task["teacher"], root / "train", tmp_path / "zero", k=4, device="cpu", temperature=0.0)
    write_cache(task["teacher"], root / "train", tmp_path / "sampled", k=4, mode="sampled", device="cpu",
                temperature=2.0)
    sampled = str(tmp_path / "sampled")
    with pytest.raises(KdstError, match=r"sampled: made at temperature 2, kd.temperature is 1 \(its draws are from "
                                        r"the teacher at T = 2\): re-run the top-k stage with kdst topk "
                                        r"--temperature 1$"):
        student_setup(task, {"cache": sampled, "temperature": 1.0})
    student_setup(task, {"cache": sampled, "temperature": 2.0})
    with pytest.raises(KdstError, match=r"kd.temperature_schedule changes T"):
        student_setup(task, {"cache": sampled, "temperature": 2.0,
                             "temperature_schedule": {"end": 1.0, "steps": 10}})
    # a cache from before the temperature was recorded was drawn at T = 1
    meta = json.loads((tmp_path / "sampled" / "meta.json").read_text())
    del meta["fingerprint"]["temperature"]
    (tmp_path / "sampled" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(KdstError, match=r"made at temperature 1, kd.temperature is 2 "):
        student_setup(task, {"cache": sampled, "temperature": 2.0})
    # renormalised top-k stores logits, which serve any temperature; its rest was measured at one
    write_cache(task["teacher"], root / "train", tmp_path / "topk", k=4, device="cpu", temperature=2.0)
    student_setup(task, {"cache": str(tmp_path / "topk"), "temperature": 1.0})
    with pytest.raises(KdstError, match=r"topk: made at temperature 2, kd.temperature is 1 \(its rest is the mass"):
        student_setup(task, {"cache": str(tmp_path / "topk"), "temperature": 1.0, "topk_rest": True})


def test_the_fingerprint_records_how_the_cache_was_made(task, tmp_path):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "s", k=4, mode="sampled", device="cpu", seed=3,
                temperature=1.5)
    made = TeacherCache(tmp_path / "s").fingerprint
    assert (made["temperature"], made["seed"], made["mode"]) == (1.5, 3, "sampled")
    # how the teacher read the source: the tokenizer the checkpoint names, which its digest does not cover
    assert made["src_tokenizer"] == tokenizer_fingerprint(root / "tok_en") != made["tokenizer"]
    write_cache(task["teacher"], root / "train", tmp_path / "t", k=4, device="cpu")
    assert "seed" not in TeacherCache(tmp_path / "t").fingerprint


def test_topk_rest_is_the_kl_of_the_collapsed_full_distributions(task, tmp_path):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "cache", k=4, device="cpu", temperature=2.0)
    kd = {"teacher": str(task["teacher"]), "weight": 1.0, "temperature": 2.0}
    _, online, online_set = student_setup(task, kd)
    _, rested, rested_set = student_setup(task, {**kd, "cache": str(tmp_path / "cache"), "topk_rest": True})
    _, renormalised, renormalised_set = student_setup(task, {**kd, "cache": str(tmp_path / "cache")})
    ids = online_set.ids[:10]
    batch = collate([online_set[u] for u in ids])
    with torch.no_grad():
        logits, targets, *_ = online.student.decoder_logits(batch)
        teacher = online.teacher_outputs(batch).logits
    mask = targets != 0
    # the brute force: both full distributions at T = 2, collapsed onto the teacher's top 4 and the rest
    p_t, p_s = (torch.softmax(x[mask].double() / 2.0, -1) for x in (teacher, logits))
    top = teacher[mask].topk(4, dim=-1).indices
    outside = torch.ones_like(p_t).scatter(1, top, 0.0)
    q = torch.cat([p_t.gather(1, top), (p_t * outside).sum(1, keepdim=True)], 1)
    r = torch.cat([p_s.gather(1, top), (p_s * outside).sum(1, keepdim=True)], 1)
    expected = float((q * (q / r).log()).sum(1).mean())
    with torch.no_grad():
        got = float(rested.kd_term(logits, targets, collate([rested_set[u] for u in ids]))[0])
        plain = float(renormalised.kd_term(logits, targets, collate([renormalised_set[u] for u in ids]))[0])
    assert got == pytest.approx(expected, rel=2e-3)  # the cache's float16 logits
    assert abs(plain - expected) > 0.05 * expected
    # the kept mass in meta.json: the mean over every cached token of the teacher's top-4 mass at T = 2
    cache = TeacherCache(tmp_path / "cache")
    rows = collate([online_set[u] for u in cache.ids])
    with torch.no_grad():
        all_logits = online.teacher_outputs(rows).logits[decoder_io(rows["tgt"], rows["tgt_lengths"])[1] != 0]
    kept = torch.softmax(all_logits.double() / 2.0, -1).topk(4, -1).values.sum(-1).mean()
    assert cache.kept_mass == pytest.approx(float(kept), abs=1e-5)


def test_topk_rest_needs_a_topk_cache_with_its_rest(task, tmp_path):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "sampled", k=4, mode="sampled", device="cpu")
    with pytest.raises(KdstError, match=r"sampled: kd.topk_rest needs a topk cache, this one is sampled"):
        student_setup(task, {"cache": str(tmp_path / "sampled"), "topk_rest": True})
    write_cache(task["teacher"], root / "train", tmp_path / "old", k=4, device="cpu")
    (tmp_path / "old" / "rest.bin").unlink()  # as a cache made before kdst stored the rest
    meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    del meta["rest"], meta["kept_mass"]
    (tmp_path / "old" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(KdstError, match=r"old: kd.topk_rest needs the teacher's mass outside the top k \(rest.bin\), "
                                        r"which this cache, made by an older kdst, lacks: re-run the top-k stage$"):
        student_setup(task, {"cache": str(tmp_path / "old"), "topk_rest": True})
    student_setup(task, {"cache": str(tmp_path / "old")})  # renormalised top-k still reads it


def test_low_kept_mass_is_warned_about_when_made_and_when_training_starts(task, tmp_path, caplog):
    root = task["root"]
    write_cache(task["teacher"], root / "train", tmp_path / "cache", k=2, device="cpu", temperature=4.0)
    lines = summary(tmp_path / "cache")
    kept = TeacherCache(tmp_path / "cache").kept_mass
    assert kept < 0.8
    assert lines[0].endswith(f"the k entries keep {kept:.1%} of the teacher's mass on average")
    assert lines[1].startswith("warning: ") and "use a larger k (kdst topk --k) or kd.topk_rest: true" in lines[1]
    with caplog.at_level(logging.WARNING, logger="kdst.train"):
        student_setup(task, {"cache": str(tmp_path / "cache"), "temperature": 4.0})
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [lines[1][len("warning: "):]]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdst.train"):
        student_setup(task, {"cache": str(tmp_path / "cache"), "temperature": 4.0, "topk_rest": True})
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    vocab = len((root / "tok_de" / "tokens.txt").read_text().splitlines())
    write_cache(task["teacher"], root / "train", tmp_path / "full", k=vocab, device="cpu")
    assert len(summary(tmp_path / "full")) == 1 and "keep 100.0%" in summary(tmp_path / "full")[0]


def test_label_smoothing_of_the_gold_term_under_word_kd(task):
    """kd.label_smoothing replaces the student's model.label_smoothing (0.1 in this config) in the gold term:
    0 by default, as in FBK's word-KD."""
    kd = {"teacher": str(task["teacher"]), "weight": 0.5}
    for smoothing, smoothed in ((None, False), (0.0, False), (0.1, True)):
        student, loss_model, kd_set = student_setup(task, kd if smoothing is None else {**kd, "label_smoothing": smoothing})
        assert student.label_smoothing == 0.1
        batch = collate([kd_set[u] for u in kd_set.ids[:6]])
        with torch.no_grad():
            loss, stats = loss_model(batch)
            _, alone = student(batch)
        assert (float(stats["ce"]) != pytest.approx(float(stats["nll"]), rel=1e-6)) == smoothed
        assert float(stats["ce"]) == pytest.approx(float(alone["ce"] if smoothed else alone["nll"]), rel=1e-6)
        assert float(loss) == pytest.approx(0.5 * float(stats["ce"]) + 0.5 * float(stats["kd"]), rel=1e-6)


def test_online_and_cached_kd_agree_under_autocast(sharp, tmp_path):
    """The online teacher keeps float32 weights and runs under the trainer's autocast (bf16 on the CPU here, as
    on a GPU), its output projection in float32: its KD term is the cache's (made in float32) to 1e-4 nats
    per token (measured here: 4e-5, from the bf16 products of its body).  Casting its weights to bf16, as
    kdst did, misses by 2.6e-4 (T = 2) to 1.2e-3 (T = 1); autocast alone, with bf16 logits, by 1.3e-3 at T = 1
    (5e-5 at T = 2)."""
    root = sharp["root"]
    vocab = len((root / "tok_de" / "tokens.txt").read_text().splitlines())
    write_cache(sharp["teacher"], root / "train", tmp_path / "cache", k=vocab, device="cpu")
    for temperature in (1.0, 2.0):
        kd = {"teacher": str(sharp["teacher"]), "weight": 0.5, "temperature": temperature}
        _, online, online_set = student_setup(sharp, kd)
        _, cached, cached_set = student_setup(sharp, {**kd, "cache": str(tmp_path / "cache")})
        old = WordKD(online.student, load_teacher(sharp["teacher"]).model.to(torch.bfloat16), weight=0.5,
                     temperature=temperature)
        bf16_logits = WordKD(online.student, load_teacher(sharp["teacher"]).model, weight=0.5, temperature=temperature)
        ids = online_set.ids[:32]
        terms = []
        for model, kd_set in ((cached, cached_set), (online, online_set), (old, online_set),
                              (bf16_logits, online_set)):
            batch = collate([kd_set[u] for u in ids])
            with torch.no_grad():
                logits, targets, *_ = online.student.decoder_logits(batch)  # float32, outside autocast
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    terms.append(float(model.kd_term(logits, targets, batch)[0]))
        cache_kd, online_kd, old_kd, bf16_logits_kd = terms
        assert abs(online_kd - cache_kd) <= 1e-4
        assert abs(old_kd - cache_kd) > 2e-4
        if temperature == 1.0:  # at T = 2 the rounding of bf16 logits is halved and happens to cancel here
            assert abs(bf16_logits_kd - cache_kd) > 2e-4
