"""Teacher ensembles (kdst.models.ensemble): the mean of the members' distributions, in teacher-forced
scoring, beam search, the top-k cache and online KD, each against a hand computation."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers import make_mt_task, write_config
from kdst.cli import main
from kdst.config import parse_kd
from kdst.data.dataset import collate, make_dataset
from kdst.data.kaldi_dir import iter_entries
from kdst.data.teacher_cache import TeacherCache
from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID
from kdst.decode.search import SearchOptions, beam_search
from kdst.errors import KdstError
from kdst.losses import word_kd_loss
from kdst.models import build_model
from kdst.models.ensemble import (EnsembleModel, ensemble, ensemble_digest, load_teachers, teachers_digest)
from kdst.models.teacher import load_teacher, teacher_digest
from kdst.teacher.topk import write_cache
from kdst.train.kd import setup_distillation
from kdst.train.trainer import build_datasets, load_config, run

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A tiny MT task and two teachers trained on it with different seeds (a few epochs: peaked enough
    that the members disagree on some tokens but neither is uniform)."""
    root = make_mt_task(tmp_path_factory.mktemp("ens"))
    for name, seed in (("a", 1), ("b", 2)):
        run(load_config(write_config(root, root / f"{name}.yaml", epochs=3, seed=seed)), root / name)
    return {"root": root, "a": str(root / "a" / "epoch-3.pt"), "b": str(root / "b" / "epoch-3.pt")}


def dev_batch(teacher, root: Path, n: int = 6) -> dict:
    dataset = make_dataset(teacher.data, root / "dev")
    return collate([dataset[u] for u in dataset.ids[:n]])


def member_log_probs(teacher, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(teacher.model.decoder_logits(batch)[0].float(), dim=-1)


def test_a_one_member_ensemble_is_its_teacher(task):
    a = load_teacher(task["a"])
    one = ensemble([a])
    batch = dev_batch(a, task["root"])
    with torch.no_grad():
        got = one.model.decoder_logits(batch)[0]
    assert torch.equal(got, member_log_probs(a, batch))  # log-sum-exp of one term, log w = 0
    options = SearchOptions(beam=4, nbest=4, max_len_ratio=2.0)
    mine, theirs = (beam_search(m, batch["src"], batch["src_lengths"], options) for m in (one.model, a.model))
    assert [[h.tokens for h in n] for n in mine] == [[h.tokens for h in n] for n in theirs]
    for n1, n2 in zip(mine, theirs):
        assert [h.logprob for h in n1] == pytest.approx([h.logprob for h in n2], rel=1e-6)
    assert one.digest == ensemble_digest([a.digest], [1.0])


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)])
def test_two_members_give_the_mean_of_their_softmaxes(task, weights):
    a, b = load_teacher(task["a"]), load_teacher(task["b"])
    both = load_teachers([task["a"], task["b"]], weights=weights)
    batch = dev_batch(a, task["root"])
    with torch.no_grad():
        got = both.model.decoder_logits(batch)[0]
    wa, wb = (0.5, 0.5) if weights is None else (0.25, 0.75)
    by_hand = wa * torch.softmax(a.model.decoder_logits(batch)[0], -1) + wb * torch.softmax(
        b.model.decoder_logits(batch)[0], -1)
    assert got.dtype == torch.float32 and got.shape == by_hand.shape
    assert torch.allclose(got.exp(), by_hand.detach(), atol=1e-6, rtol=0)  # every position, padding included
    assert torch.allclose(torch.log_softmax(got, -1), got, atol=1e-6)  # normalised: softmax leaves it as it is
    # the members disagree, so the mean is neither of them
    assert (member_log_probs(a, batch) - got).abs().max() > 1e-2 and (member_log_probs(b, batch) - got).abs().max() > 1e-2


def test_beam_one_is_the_greedy_argmax_of_the_mean_step_by_step(task):
    """The oracle re-runs both members teacher-forced on the growing prefix (no incremental state) and takes
    the argmax of the weighted mean probability at each step, until <eos> or the max length."""
    a, b = load_teacher(task["a"]), load_teacher(task["b"])
    weights = (0.3, 0.7)
    both = load_teachers([task["a"], task["b"]], weights=weights)
    batch = dev_batch(a, task["root"], n=5)
    options = SearchOptions(beam=1, length_penalty=0.0, max_len_ratio=1.5, max_len_bias=2)
    found = beam_search(both.model, batch["src"], batch["src_lengths"], options)
    differs_from_a = 0
    for i, hyps in enumerate(found):
        src, src_len = batch["src"][i:i + 1, :batch["src_lengths"][i]], batch["src_lengths"][i:i + 1]
        max_len = math.ceil(1.5 * int(src_len)) + 2
        prefix, total = [], 0.0
        while True:
            forced = {"src": src, "src_lengths": src_len, "tgt": torch.tensor([prefix], dtype=torch.long).view(1, -1),
                      "tgt_lengths": torch.tensor([len(prefix)])}
            with torch.no_grad():
                p = sum(w * torch.softmax(m.model.decoder_logits(forced)[0][0, len(prefix)], -1)
                        for w, m in zip(weights, (a, b)))
            p[BLANK_ID] = 0.0  # never emitted
            if len(prefix) == max_len:
                token = SOS_EOS_ID  # only <eos> at the max length
            else:
                token = int(p.argmax())
            total += float(torch.log(p[token]))
            if token == SOS_EOS_ID:
                break
            prefix.append(token)
        assert hyps[0].tokens == tuple(prefix)
        assert hyps[0].logprob == pytest.approx(total, abs=1e-4)
        alone = beam_search(a.model, src, src_len, options)[0][0]
        differs_from_a += alone.tokens != hyps[0].tokens or abs(alone.logprob - total) > 1e-3
    assert differs_from_a  # the search used the mean, not the first member


def test_a_cache_from_two_teachers_is_the_top_k_of_the_mean(task, tmp_path):
    root, k = task["root"], 5
    write_cache([task["a"], task["b"]], root / "train", tmp_path / "cache", k=k, device="cpu", weights=[2.0, 1.0])
    cache = TeacherCache(tmp_path / "cache")
    assert cache.fingerprint["teacher"] == teachers_digest([task["a"], task["b"]], [2.0, 1.0])
    assert cache.fingerprint["teacher"] not in (teacher_digest(task["a"]), teacher_digest(task["b"]))
    a, b = load_teacher(task["a"]), load_teacher(task["b"])
    dataset = make_dataset(a.data, root / "train")
    for utt in dataset.ids[:10]:
        batch = collate([dataset[utt]])
        n = int(batch["tgt_lengths"][0]) + 1
        with torch.no_grad():
            mean = (2 / 3) * torch.softmax(a.model.decoder_logits(batch)[0][0, :n], -1) + \
                   (1 / 3) * torch.softmax(b.model.decoder_logits(batch)[0][0, :n], -1)
        values, indices = mean.log().topk(k, dim=-1)
        got_indices, got_values = cache.get(utt, n)
        assert torch.equal(torch.from_numpy(got_indices), indices)
        # stored as float16, shifted so that the top entry is 0
        assert torch.allclose(torch.from_numpy(got_values), values - values[:, :1], atol=2e-2, rtol=1e-3)


def test_online_kd_from_an_ensemble_and_its_cache(task, tmp_path):
    """kd.teacher: [A, B] distils towards log p_ens; a cache of the same ensemble is accepted, one of A is not."""
    root = task["root"]
    config = load_config(write_config(root, tmp_path / "student.yaml"))
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes)).eval()
    kd = {"teacher": [task["a"], task["b"]], "teacher_weights": [1, 3], "weight": 0.5, "temperature": 2.0}
    loss_model, kd_set = setup_distillation(parse_kd(kd, config.model), student, train_set, config.data, CPU)
    assert isinstance(loss_model.teacher, EnsembleModel) and loss_model.teacher.weights == (0.25, 0.75)
    ids = kd_set.ids[:5]
    batch = collate([kd_set[u] for u in ids])
    teacher_batch = {"src": batch["teacher_src"], "src_lengths": batch["teacher_src_lengths"], "tgt": batch["tgt"],
                     "tgt_lengths": batch["tgt_lengths"]}
    a, b = load_teacher(task["a"]), load_teacher(task["b"])
    with torch.no_grad():
        logits, targets, *_ = student.decoder_logits(batch)
        mean = 0.25 * torch.softmax(a.model.decoder_logits(teacher_batch)[0], -1) + \
               0.75 * torch.softmax(b.model.decoder_logits(teacher_batch)[0], -1)
        mask = targets != 0
        by_hand = word_kd_loss(logits[mask], mean.log()[mask], temperature=2.0)
        got = loss_model.kd_term(logits, targets, batch)[0]
    assert float(got) == pytest.approx(float(by_hand), rel=1e-5)

    write_cache([task["a"], task["b"]], root / "train", tmp_path / "ens", k=4, device="cpu", weights=[1, 3])
    write_cache(task["a"], root / "train", tmp_path / "one", k=4, device="cpu")
    cached = {**kd, "cache": str(tmp_path / "ens")}
    setup_distillation(parse_kd(cached, config.model), student, train_set, config.data, CPU)  # accepted
    for other in ({**cached, "teacher_weights": [1, 1]}, {**cached, "cache": str(tmp_path / "one")}):
        with pytest.raises(KdstError, match="does not match this training run: teacher"):
            setup_distillation(parse_kd(other, config.model), student, train_set, config.data, CPU)


def test_the_ensemble_digest(task):
    da, db = teacher_digest(task["a"]), teacher_digest(task["b"])
    assert teachers_digest(task["a"]) == da and teachers_digest([task["a"]], [5.0]) == da  # one teacher: itself
    uniform = teachers_digest([task["a"], task["b"]])
    assert uniform == teachers_digest([task["b"], task["a"]]) == teachers_digest([task["a"], task["b"]], [2, 2])
    assert uniform != teachers_digest([task["a"], task["b"]], [1, 7]) == teachers_digest([task["a"], task["b"]], [0.1, 0.7])
    assert uniform == load_teachers([task["a"], task["b"]]).digest == ensemble_digest([db, da], [0.5, 0.5])


def with_data(checkpoint: str, out: Path, **data) -> str:
    """A copy of a checkpoint whose saved data config differs in ``data``."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["config"]["data"].update(data)
    torch.save(saved, out)
    return str(out)


def test_members_that_read_or_predict_differently_are_refused(task, tmp_path):
    root = task["root"]
    other = tmp_path / "tok_de_other"  # as many tokens, in another order: the same shapes, other ids
    shutil.copytree(root / "tok_de", other)
    tokens = (other / "tokens.txt").read_text().splitlines()
    (other / "tokens.txt").write_text("\n".join(tokens[:-2] + tokens[-2:][::-1]) + "\n")
    c = with_data(task["b"], tmp_path / "c.pt", tokenizer=str(other))
    with pytest.raises(KdstError, match=r"c\.pt: target tokenizer .*tok_de_other is not .*a/epoch-3\.pt's .*tok_de"):
        load_teachers([task["a"], c])
    d = with_data(task["b"], tmp_path / "d.pt", src_text="text")
    with pytest.raises(KdstError, match=r"d\.pt: source text file text is not .*'s text\.en"):
        load_teachers([task["a"], d])
    with pytest.raises(KdstError, match="--teacher-weights: 1 weight"):
        load_teachers([task["a"], task["b"]], weights=[1.0])
    with pytest.raises(KdstError, match="positive"):
        load_teachers([task["a"], task["b"]], weights=[1.0, 0.0])


def decode_args(task: dict) -> list[str]:
    return ["decode", "--model", task["a"], "--model", task["b"], "--teacher-weights", "1", "3",
            "--data-dir", str(task["root"] / "dev"), "--beam", "3", "--nbest", "2", "--max-len-ratio", "2.0"]


def test_kdst_decode_with_two_models(task, tmp_path):
    """kdst decode --model A --model B: the ensemble's beam search, weighted by --teacher-weights."""
    assert main([*decode_args(task), "--output-dir", str(tmp_path / "one")]) == 0
    both = load_teachers([task["a"], task["b"]], weights=[1, 3])
    dataset = make_dataset(both.data, task["root"] / "dev", with_targets=False)
    batch = collate([dataset[u] for u in dataset.ids])
    expected = beam_search(both.model, batch["src"], batch["src_lengths"],
                           SearchOptions(beam=3, nbest=2, max_len_ratio=2.0))
    hyps = {e.key: e.value for e in iter_entries(tmp_path / "one" / "hyp.txt", allow_empty_value=True)}
    assert hyps == {u: both.tokenizer.decode(n[0].tokens) for u, n in zip(dataset.ids, expected)}
    stats = json.loads((tmp_path / "one" / "decode_stats.json").read_text())
    assert stats["checkpoint"] == f"{Path(task['a']).resolve()} + {Path(task['b']).resolve()}"
    assert main([*decode_args(task)[:5], "--teacher-weights", "1", "--data-dir", str(task["root"] / "dev"),
                 "--output-dir", str(tmp_path / "bad")]) == 1


@pytest.mark.slow
def test_kdst_decode_with_two_models_in_two_jobs(task, tmp_path):
    """The split jobs get both references (absolute) and the weights."""
    assert main([*decode_args(task), "--output-dir", str(tmp_path / "one")]) == 0
    assert main([*decode_args(task), "--output-dir", str(tmp_path / "two"), "--nj", "2"]) == 0
    assert (tmp_path / "one" / "hyp.txt").read_text() == (tmp_path / "two" / "hyp.txt").read_text()
