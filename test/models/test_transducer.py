"""The transducer: shapes, the loss, building from config, the streaming encoder's causality, overfitting."""

from __future__ import annotations

import pytest
import torch

from kdst.errors import KdstError
import torchaudio

from kdst.decode.transducer_search import greedy_search
from kdst.losses import rnnt_kd_loss
from kdst.models import Transducer, build_model
from kdst.models.encoders import SpeechEncoder
from kdst.models.protocol import TeacherOutputs
from kdst.models.streaming import StreamingConformerEncoder, visible_input_frames

ENCODERS = {
    "conformer": {"type": "conformer", "d_model": 16, "layers": 1, "heads": 2, "ff_dim": 32, "kernel_size": 5,
                  "subsampling_channels": 4, "dropout": 0.0},
    "streaming_conformer": {"type": "streaming_conformer", "d_model": 16, "layers": 2, "heads": 2, "ff_dim": 32,
                            "kernel_size": 3, "subsampling_channels": 4, "chunk_size": 2, "left_chunks": 2,
                            "dropout": 0.0},
}
PREDICTORS = {"stateless": {"type": "stateless", "dim": 16, "context_size": 2},
              "lstm": {"type": "lstm", "dim": 16, "layers": 2, "dropout": 0.0}}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def config(encoder="streaming_conformer", predictor="stateless", vocab=8, **extra) -> dict:
    return {"type": "transducer", "input_dim": 20, "vocab_size": vocab, "encoder": dict(ENCODERS[encoder]),
            "predictor": dict(PREDICTORS[predictor]), "joiner": {"dim": 16}, **extra}


def batch(vocab=8, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src_lengths, tgt_lengths = torch.tensor([43, 30, 19]), torch.tensor([4, 2, 1])
    src = torch.randn(3, 43, 20, generator=g)
    tgt = torch.randint(1, vocab, (3, 4), generator=g)
    tgt[torch.arange(4)[None] >= tgt_lengths[:, None]] = 0
    return {"ids": ["a", "b", "c"], "src": src, "src_lengths": src_lengths, "tgt": tgt, "tgt_lengths": tgt_lengths}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("predictor", PREDICTORS)
def test_shapes_and_loss_equal_torchaudio(encoder, predictor):
    torch.manual_seed(0)
    model = build_model(config(encoder, predictor)).eval()
    assert isinstance(model, Transducer)
    b = batch()
    with torch.no_grad():
        logits, logit_lengths, tgt, tgt_lengths = model.joint_logits(b)
        assert logits.shape == (3, 10, 5, 8)  # T' = ((43 - 1) // 2 - 1) // 2, U + 1, V
        assert logit_lengths.tolist() == [10, 6, 4]
        assert tgt is b["tgt"] and tgt_lengths is b["tgt_lengths"]
        loss, stats = model(b)
        expected = torchaudio.functional.rnnt_loss(logits, tgt.int(), logit_lengths.int(), tgt_lengths.int(),
                                                   blank=0, reduction="sum") / 7
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert stats["rnnt"] == stats["loss"] == pytest.approx(loss.item()) and stats["ntokens"] == 7.0


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_predictor_steps_equal_the_full_forward(predictor):
    torch.manual_seed(0)
    model = build_model(config("conformer", predictor)).eval()
    labels = torch.tensor([[0, 3, 5, 1, 7], [0, 2, 2, 6, 4]])
    with torch.no_grad():
        full = model.joiner.predictor_proj(model.predictor(labels))
        state = model.init_predictor_state(2)
        for u in range(labels.shape[1]):
            out, state = model.predictor_step(labels[:, u], state)
            torch.testing.assert_close(out, full[:, u], atol=1e-6, rtol=1e-5)


def test_weighted_targets_ctc_and_distill():
    torch.manual_seed(0)
    model = build_model(config("conformer", "lstm", ctc_weight=0.3)).eval()
    b = batch()
    with torch.no_grad():
        loss, stats = model(b)
        assert set(stats) == {"loss", "rnnt", "nll", "ctc", "ntokens"}
        assert loss.item() == pytest.approx(float(0.7 * stats["rnnt"] + 0.3 * stats["ctc"]), rel=1e-5)
        # one weight-1 target row per utterance is the plain loss
        weighted, wstats = model({**b, "tgt_utt": torch.arange(3), "tgt_weight": torch.ones(3)})
        assert weighted.item() == pytest.approx(loss.item(), rel=1e-5)

        seen = {}

        seen["logits"] = model.joint_logits(b)[0]
        seen["teacher"] = torch.randn_like(seen["logits"]) * 3
        mixed, mstats = model(b, teacher=TeacherOutputs(logits=seen["teacher"], mode="full", temperature=2.0,
                                                        weight=0.25, normalize="tokens"))
        ntokens = b["tgt_lengths"].sum()
        frames = model.joint_logits(b)[1]
        kd = rnnt_kd_loss(seen["logits"], seen["teacher"], b["tgt"], frames, b["tgt_lengths"],
                          temperature=2.0, reduction="sum") / ntokens
    assert seen["logits"].shape == (3, 10, 5, 8)
    assert mstats["kd"] == pytest.approx(float(kd), rel=1e-5) and mstats["rnnt"] == pytest.approx(stats["rnnt"])
    expected = float(0.7 * (0.75 * stats["rnnt"] + 0.25 * kd) + 0.3 * stats["ctc"])
    assert mixed.item() == pytest.approx(expected, rel=1e-5)


def test_build_from_config_and_unknown_options():
    model = build_model(config("conformer", "lstm"))
    assert isinstance(model.encoder, SpeechEncoder) and model.ctc is None
    assert isinstance(build_model(config()).encoder, StreamingConformerEncoder)
    assert build_model({"type": "transducer", "vocab_size": 5, "input_dim": 20}).joiner.output.out_features == 5
    bad = [({**config(), "dropuot": 0.1}, "dropuot"),
           ({**config(), "encoder": {**ENCODERS["conformer"], "chunk_size": 4}}, "chunk_size"),
           ({**config(), "encoder": {"type": "lstm"}}, "lstm"),
           ({**config(), "predictor": {"type": "stateless", "layers": 2}}, "layers"),
           ({**config(), "predictor": {"type": "gru"}}, "gru"),
           ({**config(), "joiner": {"dim": 8, "act": "relu"}}, "act")]
    for cfg, word in bad:
        with pytest.raises(KdstError, match=word):
            build_model(cfg)


def test_streaming_encoder_never_reads_past_its_chunk():
    torch.manual_seed(0)
    streaming = StreamingConformerEncoder(input_dim=20, d_model=16, layers=2, heads=2, ff_dim=32, kernel_size=3,
                                          dropout=0.0, subsampling_channels=4, chunk_size=2, left_chunks=1).eval()
    full = SpeechEncoder(input_dim=20, d_model=16, layers=2, heads=2, ff_dim=32, kernel_size=3, dropout=0.0,
                         subsampling_channels=4).eval()
    x, lengths = torch.randn(1, 60, 20), torch.tensor([60])  # 14 frames, 7 chunks after subsampling
    chunk = 2
    seen, frames = visible_input_frames(chunk, 2), 2 * (chunk + 1)
    later = x.clone()
    later[:, seen:] = torch.randn(1, 60 - seen, 20)
    just_inside = x.clone()
    just_inside[:, seen - 1] += 1.0  # the last frame of the right context
    with torch.no_grad():
        base, out_lengths = streaming(x, lengths)
        assert base.shape == (1, 14, 16) and out_lengths.tolist() == [14]
        torch.testing.assert_close(streaming(later, lengths)[0][:, :frames], base[:, :frames], atol=1e-6, rtol=0)
        assert not torch.allclose(streaming(later, lengths)[0][:, frames:], base[:, frames:])
        assert not torch.allclose(streaming(just_inside, lengths)[0][:, frames - 1], base[:, frames - 1])
        # the full-context encoder does look ahead
        assert not torch.allclose(full(later, lengths)[0][:, :frames], full(x, lengths)[0][:, :frames])


def test_streaming_encoder_batched_equals_alone():
    torch.manual_seed(0)
    enc = StreamingConformerEncoder(input_dim=20, d_model=16, layers=2, heads=2, ff_dim=32, kernel_size=3,
                                    dropout=0.0, subsampling_channels=4, chunk_size=3, left_chunks=0).eval()
    b = batch()
    with torch.no_grad():
        out, lengths = enc(b["src"], b["src_lengths"])
        for i, n in enumerate(b["src_lengths"].tolist()):
            alone, _ = enc(b["src"][i:i + 1, :n], b["src_lengths"][i:i + 1])
            torch.testing.assert_close(out[i:i + 1, :lengths[i]], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder,predictor", [("streaming_conformer", "stateless"), ("conformer", "lstm")])
def test_tiny_model_overfits_and_greedy_finds_the_targets(encoder, predictor):
    torch.manual_seed(0)
    model = build_model(config(encoder, predictor, vocab=6))
    g = torch.Generator().manual_seed(1)
    b = {"ids": ["a", "b"], "src": torch.randn(2, 39, 20, generator=g), "src_lengths": torch.tensor([39, 31]),
         "tgt": torch.tensor([[3, 5, 4], [2, 4, 0]]), "tgt_lengths": torch.tensor([3, 2])}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = None
    for _ in range(120):
        loss, _ = model(b)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first
    hyps = greedy_search(model, b["src"], b["src_lengths"])
    assert [h.tokens for h in hyps] == [(3, 5, 4), (2, 4)]
