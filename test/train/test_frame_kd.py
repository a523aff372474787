"""Frame-level KD: the CTC-posterior KL, the hidden-state term and its projection, refusals, exact resume."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from kdst.config import ConfigError, OnlineWordKDConfig, parse_config, parse_kd
from kdst.config.sections import FrameKDConfig, FrameOnlyKDConfig
from kdst.data.dataset import collate
from kdst.data.tokenizer import train_tokenizer
from kdst.errors import KdstError
from kdst.losses import word_kd_loss
from kdst.models import build_model
from kdst.models.encoder_decoder import EncoderDecoder
from kdst.models.loading import load_model
from kdst.models.protocol import TeacherOutputs
from kdst.train.checkpoint import average
from kdst.train.frame_kd import FrameKD, capture, encoder_block, hidden_distance, setup_kd
from kdst.train.kd import WordKD
from kdst.train.trainer import build_datasets, run
from transducer_task import FEAT_DIM, make_feature_task, transducer_config

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def aed_config(root, *, d_model: int = 16, layers: int = 1, ctc_weight: float = 0.3, tokenizer: str = "tok",
               encoder: str = "conformer", **train) -> dict:
    """A tiny attention encoder-decoder with a CTC branch on make_feature_task's data."""
    return {
        "data": {"train": str(root / "train"), "valid": str(root / "dev"), "text": "text",
                 "tokenizer": str(root / tokenizer), "max_units": 400},
        "model": {"input_dim": FEAT_DIM, "d_model": d_model, "ctc_weight": ctc_weight,
                  "encoder": {"type": encoder, "layers": layers, "heads": 2, "ff_dim": 32, "kernel_size": 3,
                              "subsampling_channels": 4, "dropout": 0.1},
                  "decoder": {"layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.1}},
        "optim": {"lr": 3e-3, "warmup_steps": 5, "schedule": "noam"},
        "train": {"epochs": 1, "seed": 7, "log_interval": 1, "keep_best": 2, "bf16": False, **train},
    }


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """The feature task, an ASR teacher (2 conformer blocks, d_model 24, CTC head) trained for one epoch,
    one without a CTC head, and a second tokenizer (another vocabulary)."""
    root = make_feature_task(tmp_path_factory.mktemp("frame_kd"))
    torch.set_num_threads(1)
    run(parse_config(aed_config(root, d_model=24, layers=2)), root / "teacher")
    run(parse_config(aed_config(root, d_model=24, ctc_weight=0.0, max_steps=1)), root / "no_ctc")
    (root / "other.txt").write_text("xyz zyx ab\n")
    train_tokenizer(root / "tok_other", [root / "other.txt"], type="char")
    return {"root": root, "teacher": str(root / "teacher" / "epoch-1.pt"), "no_ctc": str(root / "no_ctc" / "last.pt")}


def student_config(task: dict, kd: dict | None = None, **options) -> dict:
    return {**aed_config(task["root"], **options), "kd": kd}


def frame(task: dict, **options) -> dict:
    return {"frame": {"teacher": task["teacher"], **options}}


def setup(task: dict, kd: dict, data: dict | None = None, seed: int = 0, **options):
    raw = student_config(task, kd, **options)
    raw["data"].update(data or {})
    config = parse_config(raw)
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(seed)
    student = build_model(replace(config.model, **sizes))
    loss_model, kd_set = setup_kd(config.kd, student, train_set, config.data, CPU)
    return student, loss_model, kd_set


def batch_of(kd_set, n: int = 6) -> dict:
    return collate([kd_set[u] for u in kd_set.ids[:n]])


# --- the CTC KL --------------------------------------------------------------------------------------


def test_ctc_kl_by_hand_padding_counts_zero():
    """Two utterances, 3 and 2 frames over 3 tokens; the padded frame holds NaN in the teacher and garbage in the
    student and contributes nothing.  KL(p_T || p_S) at T = 1 and T = 2, per token and per frame."""
    p_t = [[[0.5, 0.25, 0.25], [0.8, 0.1, 0.1], [1 / 3, 1 / 3, 1 / 3]],
           [[0.25, 0.5, 0.25], [0.6, 0.3, 0.1], [float("nan")] * 3]]
    p_s = [[[0.25, 0.5, 0.25], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]],
           [[0.25, 0.25, 0.5], [0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]]
    real = [3, 2]

    def kl(p, q, t):
        p = [x ** (1 / t) for x in p]
        q = [x ** (1 / t) for x in q]
        p, q = [x / sum(p) for x in p], [x / sum(q) for x in q]
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    model = EncoderDecoder(nn.Identity(), None, vocab_size=3, d_model=3, ctc_weight=0.3)
    model.ctc = nn.Identity()  # the memory below is the student's CTC logits
    student = torch.tensor(p_s).log()
    teacher_logits = torch.tensor(p_t).log()
    # at T = 1: frames (0, 0) and (1, 0) are 0.5 ln 2 - 0.25 ln 2 each, (0, 1) is 0
    uniform = math.log(1 / 3) - (math.log(0.2) + math.log(0.3) + math.log(0.5)) / 3
    last = 0.6 * math.log(0.6 / 0.1) + 0.3 * math.log(1.0) + 0.1 * math.log(0.1 / 0.6)
    assert sum(kl(p_t[b][f], p_s[b][f], 1.0) for b in range(2) for f in range(real[b])) == pytest.approx(
        0.5 * math.log(2) + uniform + last)
    for t in (1.0, 2.0):
        total = sum(kl(p_t[b][f], p_s[b][f], t) for b in range(2) for f in range(real[b]))
        for normalize, divisor in (("tokens", 2 + 1), ("frames", 5)):
            teacher = TeacherOutputs(weight=0.0, ctc_logits=teacher_logits, ctc_temperature=t,
                                     ctc_normalize=normalize)
            got = model.ctc_kd_loss(student, torch.tensor(real), teacher, tgt_lengths=torch.tensor([2, 1]))
            assert float(got) == pytest.approx(total / divisor, rel=1e-6)
    wrong = TeacherOutputs(weight=0.0, ctc_logits=teacher_logits[:, :2])
    with pytest.raises(KdstError, match="one frame rate and one CTC vocabulary"):
        model.ctc_kd_loss(student, torch.tensor(real), wrong, torch.tensor([2, 1]))


def test_ctc_kd_in_the_students_loss(task):
    """The forward's stats: ctc_kd is the KL of the teacher's CTC logits on its clean encoder output, and the loss
    is (1 - c) * CE + c * ((1 - w) * CTC + w * KL)."""
    student, loss_model, kd_set = setup(task, frame(task, ctc_weight=0.4, temperature=2.0))
    assert isinstance(loss_model, FrameKD) and loss_model.projection is None
    loss_model.eval()
    batch = batch_of(kd_set)
    with torch.no_grad():
        loss, stats = loss_model(batch)
        plain_loss, plain = student(batch)
        memory, lengths = student.encode(batch["src"], batch["src_lengths"])
        t_memory, t_lengths = loss_model.teacher.encode(batch["src"], batch["src_lengths"])
        assert torch.equal(lengths, t_lengths)
        mask = torch.arange(memory.shape[1])[None, :] < lengths[:, None]
        kl = word_kd_loss(student.ctc(memory)[mask], loss_model.teacher.ctc(t_memory)[mask], temperature=2.0,
                          reduction="sum") / batch["tgt_lengths"].sum()
    assert float(stats["ctc_kd"]) == pytest.approx(float(kl), rel=1e-5) and float(kl) > 0
    assert float(stats["ctc"]) == pytest.approx(float(plain["ctc"]), rel=1e-6)  # the student's own CTC, unmixed
    expected = 0.7 * float(plain["ce"]) + 0.3 * (0.6 * float(plain["ctc"]) + 0.4 * float(kl))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert "hidden" not in stats and "kd" not in stats


def test_beside_word_level_kd(task):
    """Word-level KD (here an online teacher fed the same features) and frame-level KD in one loss."""
    config = parse_config(student_config(task))
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes)).eval()
    teacher = build_model(replace(config.model, **sizes)).eval()  # any teacher with a decoder on this vocabulary
    word = WordKD(student, teacher, weight=0.25)
    frame_teacher = load_model(task["teacher"])[0]
    loss_model = FrameKD(student, frame_teacher, FrameKDConfig(teacher=task["teacher"], ctc_weight=0.5), word=word)
    loss_model.eval()
    batch = collate([train_set[u] for u in train_set.ids[:5]])
    batch["teacher_src"], batch["teacher_src_lengths"] = batch["src"], batch["src_lengths"]
    with torch.no_grad():
        loss, stats = loss_model(batch)
        _, alone = FrameKD(student, frame_teacher, FrameKDConfig(teacher=task["teacher"], ctc_weight=0.5))(batch)
        logits, targets, *_ = student.decoder_logits(batch)
        kd = float(word.kd_term(logits, targets, batch)[0])
    assert float(stats["kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(stats["ctc_kd"]) == pytest.approx(float(alone["ctc_kd"]), rel=1e-6)
    expected = (0.7 * (0.75 * float(stats["ce"]) + 0.25 * kd)
                + 0.3 * (0.5 * float(stats["ctc"]) + 0.5 * float(stats["ctc_kd"])))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# --- the hidden-state term ---------------------------------------------------------------------------


def test_hidden_distance_by_hand():
    projected = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [50.0, -7.0]]])
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0]], [[1.0, 1.0], [float("nan"), 0.0]]])
    target = torch.nan_to_num(target, nan=1e6)  # the padded frame is far off: it must not count
    lengths = torch.tensor([2, 1])
    # real values: (1, 0), (2, 3), (-1, 0): 6 values
    assert float(hidden_distance(projected, target, lengths, "mse")) == pytest.approx((1 + 0 + 4 + 9 + 1 + 0) / 6)
    assert float(hidden_distance(projected, target, lengths, "l1")) == pytest.approx((1 + 0 + 2 + 3 + 1 + 0) / 6)


@pytest.mark.parametrize("encoder", ["conformer", "transformer"])
def test_the_chosen_block_is_captured(task, encoder):
    """The last block's output is the encoder output (conformer; a transformer adds its final norm), and block 1
    of 2 is what feeding the block by hand gives."""
    config = parse_config(aed_config(task["root"], layers=2, encoder=encoder))
    train_set, _, sizes = build_datasets(config.data)
    model = build_model(replace(config.model, **sizes)).eval()
    batch = collate([train_set[u] for u in train_set.ids[:4]])
    encoder_module = model.encoder
    with torch.no_grad(), capture(*encoder_block(encoder_module, -1, "k")) as last, \
            capture(*encoder_block(encoder_module, 1, "k")) as first:
        out, lengths = model.encode(batch["src"], batch["src_lengths"])
    assert last[0].shape == out.shape and first[0].shape == out.shape
    if encoder == "conformer":
        assert torch.equal(last[0], out)
    else:
        torch.testing.assert_close(encoder_module.blocks.norm(last[0]), out)
    assert not torch.equal(first[0], last[0])
    with pytest.raises(KdstError, match="kd.frame.hidden_layer: 3, but the encoder has 2 block"):
        encoder_block(encoder_module, 3, "kd.frame.hidden_layer")


def test_projection_learns_and_only_the_student_and_projection_get_gradients(task):
    student, loss_model, kd_set = setup(task, frame(task, ctc_weight=0.5, hidden_weight=2.0, hidden_layer=1,
                                                    teacher_layer=1, hidden_loss="l1"))
    projection = loss_model.projection
    assert (projection.in_features, projection.out_features) == (16, 24)
    loss_model.eval()
    batch = batch_of(kd_set)
    loss, stats = loss_model(batch)
    with torch.no_grad():
        with capture(*encoder_block(student.encoder, 1, "k")) as s_hidden:
            _, lengths = student.encode(batch["src"], batch["src_lengths"])
        with capture(*encoder_block(loss_model.teacher.encoder, 1, "k")) as t_hidden:
            loss_model.teacher.encode(batch["src"], batch["src_lengths"])
        expected = hidden_distance(projection(s_hidden[0]), t_hidden[0], lengths, "l1")
    assert float(stats["hidden"]) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0
    without_hidden = float(stats["loss"]) - 2.0 * float(expected)
    assert without_hidden == pytest.approx(0.7 * float(stats["ce"]) + 0.3 * (0.5 * float(stats["ctc"])
                                                                              + 0.5 * float(stats["ctc_kd"])),
                                           rel=1e-5)
    loss.backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_model.teacher.parameters())
    assert not any(p.requires_grad for p in loss_model.teacher.parameters())
    assert student.encoder.subsampling.proj.weight.grad.abs().sum() > 0
    assert student.ctc.weight.grad.abs().sum() > 0


def test_the_teacher_hears_clean_features_and_stays_in_eval(task):
    _, loss_model, kd_set = setup(task, frame(task))
    loss_model.train()
    assert loss_model.student.training and not loss_model.teacher.training
    batch = batch_of(kd_set, 3)
    heard = {}
    encode = loss_model.teacher.encode

    def spy(src, lengths):
        heard["src"] = src
        return encode(src, lengths)

    loss_model.teacher.encode = spy
    masked = batch["src"].clone()
    masked[:, :10] = 0
    loss_model({**batch, "src": masked, "clean_src": batch["src"]})
    assert torch.equal(heard["src"], batch["src"])


# --- refusals ----------------------------------------------------------------------------------------


def test_config_variants_and_bad_combinations(task):
    model = parse_config(student_config(task)).model
    alone = parse_kd(frame(task), model)
    assert isinstance(alone, FrameOnlyKDConfig) and alone.frame == FrameKDConfig(teacher=task["teacher"])
    both = parse_kd({"teacher": "mt.pt", "weight": 0.3, **frame(task, hidden_weight=1.0)}, model)
    assert isinstance(both, OnlineWordKDConfig) and both.frame.hidden_weight == 1.0
    bad = [({"frame": {"teacher": "t.pt", "ctc_weight": 0.0}}, "kd.frame.ctc_weight: 0 with hidden_weight 0"),
           ({"frame": {"teacher": "t.pt", "hidden_layer": 0}}, "kd.frame.hidden_layer: counts encoder blocks"),
           ({"frame": {"teacher": "t.pt", "ctc_weight": 1.5}}, r"kd.frame.ctc_weight: must be in \[0, 1\]"),
           ({"frame": {"teacher": "t.pt", "hidden_loss": "cos"}}, "kd.frame.hidden_loss: 'cos' is not one of"),
           ({"frame": {"teacher": "t.pt", "ctc_wieght": 0.5}}, r"did you mean kd.frame.ctc_weight\?"),
           ({"frame": {"teacher": "t.pt"}, "weight": 0.5}, "kd.weight: word-level KD needs kd.teacher or kd.cache")]
    for raw, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_kd(raw, model)
    rnnt = parse_config(transducer_config(task["root"])).model
    with pytest.raises(ConfigError, match="kd.frame: frame-level KD is for encoder-decoder students"):
        parse_kd({"teacher": "t.pt", "frame": {"teacher": "t.pt"}}, rnnt)


def test_refused_on_another_ctc_vocabulary(task):
    with pytest.raises(KdstError, match=r"teacher's CTC vocabulary \(.*tok, \d+ tokens\) is not the student's "
                                        r"\(data.tokenizer .*tok_other"):
        setup(task, frame(task), tokenizer="tok_other")


def test_st_student_learns_the_transcript_vocabulary_from_its_ctc_text(task):
    """ST: the student's targets are in another vocabulary, its CTC branch learns data.ctc_text with
    data.ctc_tokenizer, which must be the ASR teacher's tokenizer."""
    st = {"ctc_text": "text", "ctc_tokenizer": str(task["root"] / "tok")}
    student, loss_model, kd_set = setup(task, frame(task), data=st, tokenizer="tok_other")
    assert student.ctc.out_features != student.vocab_size
    batch = batch_of(kd_set)
    assert "ctc_tgt" in batch
    loss_model.eval()
    with torch.no_grad():
        _, stats = loss_model(batch)
        memory, lengths = student.encode(batch["src"], batch["src_lengths"])
        t_memory, _ = loss_model.teacher.encode(batch["src"], batch["src_lengths"])
        mask = torch.arange(memory.shape[1])[None, :] < lengths[:, None]
        kl = word_kd_loss(student.ctc(memory)[mask], loss_model.teacher.ctc(t_memory)[mask], reduction="sum")
    assert float(stats["ctc_kd"]) == pytest.approx(float(kl / batch["ctc_tgt_lengths"].sum()), rel=1e-5)
    other = {"ctc_text": "text", "ctc_tokenizer": str(task["root"] / "tok_other")}
    with pytest.raises(KdstError, match=r"is not the student's \(data.ctc_tokenizer .*tok_other"):
        setup(task, frame(task), data=other)


def test_refused_on_another_frame_rate(task):
    """kdst's encoders all subsample by 4: a student subsampling by 6 is simulated on its subsampling's lengths."""
    config = parse_config(student_config(task, frame(task)))
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes))
    student.encoder.subsampling.output_lengths = lambda lengths: ((lengths - 1) // 2 - 2) // 3
    with pytest.raises(KdstError, match=r"another frame rate than the student's \(11 input frames give 2 teacher "
                                        r"frames, 1 student frames\)"):
        setup_kd(config.kd, student, train_set, config.data, CPU)


def test_refused_without_ctc_heads_or_with_other_features(task):
    with pytest.raises(KdstError, match="the teacher has no CTC head"):
        setup(task, {"frame": {"teacher": task["no_ctc"]}})
    _, hidden_only, _ = setup(task, {"frame": {"teacher": task["no_ctc"], "ctc_weight": 0.0, "hidden_weight": 1.0}})
    assert hidden_only.projection is not None
    with pytest.raises(KdstError, match=r"kd.frame.ctc_weight: the student has no CTC branch \(model.ctc_weight: 0\)"):
        setup(task, frame(task), ctc_weight=0.0)
    with pytest.raises(KdstError, match="frame-level KD takes a kdst checkpoint teacher"):
        setup(task, {"frame": {"teacher": "espnet:exp/asr"}})
    config = parse_config(student_config(task, frame(task)))
    train_set, _, sizes = build_datasets(config.data)
    student = build_model(replace(config.model, **sizes))
    normalised = replace(config.data, cmvn=str(task["root"] / "cmvn.ark"))  # the teacher had no CMVN
    with pytest.raises(KdstError, match="the teacher was trained on features normalised with None, the student's"):
        setup_kd(config.kd, student, train_set, normalised, CPU)
    wider = build_model(replace(config.model, **sizes, input_dim=FEAT_DIM + 4))
    with pytest.raises(KdstError, match="the teacher reads 20-dim features, the student 24-dim"):
        setup_kd(config.kd, wider, train_set, config.data, CPU)


# --- training, checkpoints and exact resume ----------------------------------------------------------


def test_interrupted_and_resumed_equals_uninterrupted_with_the_projection(task, tmp_path):
    kd = frame(task, ctc_weight=0.5, hidden_weight=1.0)
    raw = student_config(task, kd, epochs=2)
    straight = run(parse_config(raw), tmp_path / "straight")
    stop_at = straight.step // 2 + 1  # inside the second epoch
    assert straight.step // 2 < stop_at < straight.step
    run(parse_config({**raw, "train": {**raw["train"], "max_steps": stop_at}}), tmp_path / "resumed")
    halfway = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    run(parse_config(raw), tmp_path / "resumed", resume=True)

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert set(a["kd"]) == {"projection.weight", "projection.bias"}
    for name in a["kd"]:
        assert torch.equal(a["kd"][name], b["kd"][name]), name  # saved, restored and trained on
        assert not torch.equal(halfway["kd"][name], b["kd"][name]), name
    # the student alone under "model": decoding and averaging read a plain student checkpoint
    student = build_model(a["config"]["model"])
    assert set(a["model"]) == set(student.state_dict())
    assert len(a["optimizer"]["state"]) == len(list(student.parameters())) + 2
    model, _ = load_model(average(tmp_path / "straight", 2, by="last"))
    assert isinstance(model, EncoderDecoder)


def test_no_projection_no_kd_entry_and_resume_compares_kd_frame(task, tmp_path):
    raw = student_config(task, frame(task), max_steps=1)
    run(parse_config(raw), tmp_path / "exp")
    saved = torch.load(tmp_path / "exp" / "last.pt", weights_only=False)
    assert "kd" not in saved  # nothing trained besides the student: the checkpoint is as without KD
    hidden = student_config(task, frame(task, hidden_weight=1.0), max_steps=2)
    with pytest.raises(KdstError, match="another config"):
        run(parse_config(hidden), tmp_path / "exp", resume=True)
