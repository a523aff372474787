"""The encoder-decoder: incremental decoding, losses, CTC targets, building from config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdst.errors import KdstError

from kdst.models import build_model
from kdst.models.encoder_decoder import decoder_io
from kdst.models.encoders import lengths_to_mask

SMALL = {"d_model": 32, "decoder": {"layers": 2, "heads": 2, "ff_dim": 64, "dropout": 0.1}}
CONFIGS = {
    "conformer": {**SMALL, "input": "speech", "vocab_size": 40, "ctc_weight": 0.3,
                  "encoder": {"type": "conformer", "layers": 2, "heads": 2, "ff_dim": 64, "kernel_size": 7,
                              "subsampling_channels": 8}},
    "transformer": {**SMALL, "input": "speech", "vocab_size": 40,
                    "encoder": {"type": "transformer", "layers": 2, "heads": 2, "ff_dim": 64}},
    "text": {**SMALL, "input": "text", "vocab_size": 40, "src_vocab_size": 30,
             "encoder": {"layers": 2, "heads": 2, "ff_dim": 64}},
}


def batch_for(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        src, src_lengths = torch.randint(3, 30, (3, 9), generator=g), torch.tensor([9, 5, 2])
    else:
        src, src_lengths = torch.randn(3, 57, 80, generator=g), torch.tensor([57, 40, 23])
    tgt, tgt_lengths = torch.randint(3, 40, (3, 6), generator=g), torch.tensor([6, 4, 1])
    tgt[torch.arange(6)[None, :] >= tgt_lengths[:, None]] = 0
    return {"ids": ["a", "b", "c"], "src": src, "src_lengths": src_lengths, "tgt": tgt, "tgt_lengths": tgt_lengths}


def test_decoder_io_places_sos_and_eos():
    tgt, lengths = torch.tensor([[5, 6, 7], [8, 0, 0]]), torch.tensor([3, 1])
    inputs, outputs = decoder_io(tgt, lengths)
    assert inputs.tolist() == [[2, 5, 6, 7], [2, 8, 0, 0]]
    assert outputs.tolist() == [[5, 6, 7, 2], [8, 2, 0, 0]]


@pytest.mark.parametrize("kind", CONFIGS)
def test_incremental_decoding_equals_the_full_forward(kind: str):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind]).eval()
    batch = batch_for(kind)
    with torch.no_grad():
        logits, _, memory, memory_lengths = model.decoder_logits(batch)
        inputs, _ = decoder_io(batch["tgt"], batch["tgt_lengths"])
        # capacity 2: the cache has to grow on the way
        state = model.decoder.init_state(memory, lengths_to_mask(memory_lengths, memory.shape[1]), capacity=2)
        steps = []
        for u in range(inputs.shape[1]):
            step_logits, state = model.decoder.step(inputs[:, u], state)
            steps.append(step_logits)
        # Reordering the state (as beam search does) keeps each row's history.
        flipped = state.select(torch.tensor([2, 1, 0]))
        filled = state.length
        assert torch.equal(flipped.self_k[0][0, :, :filled], state.self_k[0][2, :, :filled])
    torch.testing.assert_close(torch.stack(steps, 1), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "conformer"])
def test_padding_does_not_change_a_sequence_result(kind: str):
    """Also for the Conformer, whose depthwise convolution must not read the padded frames."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind]).eval()
    batch = batch_for(kind)
    with torch.no_grad():
        logits, *_ = model.decoder_logits(batch)
        alone = {k: (v[2:3] if torch.is_tensor(v) else v[2:3]) for k, v in batch.items()}
        alone["src"] = alone["src"][:, :23]
        alone["tgt"] = alone["tgt"][:, :1]
        single, *_ = model.decoder_logits(alone)
    torch.testing.assert_close(single[0, :2], logits[2, :2], rtol=1e-4, atol=1e-5)


def test_loss_is_label_smoothed_cross_entropy_per_token():
    torch.manual_seed(0)
    model = build_model(CONFIGS["text"]).eval()
    batch = batch_for("text")
    loss, stats = model(batch)
    logits, targets, *_ = model.decoder_logits(batch)
    mask = targets != 0
    expected = F.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert stats["ntokens"] == float(mask.sum()) == 11 + 3  # tokens + one <eos> per utterance
    assert stats["nll"] == pytest.approx(F.cross_entropy(logits[mask], targets[mask]).item(), rel=1e-5)


def test_ctc_on_the_source_transcript():
    torch.manual_seed(0)
    config = {**CONFIGS["conformer"], "ctc_vocab_size": 20}
    model = build_model(config).eval()
    assert model.ctc.out_features == 20
    batch = batch_for("conformer")
    batch["ctc_tgt"], batch["ctc_tgt_lengths"] = torch.randint(3, 20, (3, 4)), torch.tensor([4, 3, 2])
    loss, stats = model(batch)
    memory, memory_lengths = model.encode(batch["src"], batch["src_lengths"])
    ctc = model.ctc_loss(memory, memory_lengths, batch["ctc_tgt"], batch["ctc_tgt_lengths"])
    assert stats["ctc"] == pytest.approx(ctc.item(), rel=1e-5)
    torch.testing.assert_close(loss, 0.7 * stats["ce"] + 0.3 * ctc, rtol=1e-5, atol=1e-5)


def test_unknown_options_are_errors():
    with pytest.raises(KdstError, match=r"model.dropuot: unknown key"):
        build_model({**CONFIGS["text"], "dropuot": 0.1})
    with pytest.raises(KdstError, match="model.encoder.type: 'lstm' is not one of conformer, transformer"):
        build_model({**CONFIGS["transformer"], "encoder": {"type": "lstm"}})
    with pytest.raises(KdstError, match="model.encoder.heads: 3 heads do not divide d_model"):
        build_model({**CONFIGS["transformer"], "encoder": {"heads": 3}})
    with pytest.raises(KdstError, match="model.d_model: must be >= 1, not 0"):
        build_model({**CONFIGS["transformer"], "d_model": 0})
    with pytest.raises(KdstError, match="model.encoder.type: 'conformer' is not an encoder for input text"):
        build_model({**CONFIGS["text"], "encoder": {"type": "conformer"}})



def test_beams_share_the_encoder_side_of_the_state():
    """group=K rows per utterance (cross-attention keys/values stored once) steps exactly like K copies
    of the utterance; reorder_ within an utterance equals select; select can retire utterances."""
    torch.manual_seed(0)
    model = build_model(CONFIGS["transformer"]).eval()
    batch = batch_for("transformer")
    k = 3
    with torch.no_grad():
        memory, memory_lengths = model.encode(batch["src"], batch["src_lengths"])
        mask = lengths_to_mask(memory_lengths, memory.shape[1])
        a = memory.shape[0]
        grouped = model.decoder.init_state(memory, mask, group=k, capacity=4)
        copies = model.decoder.init_state(memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), capacity=4)
        g = torch.Generator().manual_seed(3)
        for _ in range(6):
            tokens = torch.randint(3, 10, (a * k,), generator=g)
            got, grouped = model.decoder.step(tokens, grouped)
            want, copies = model.decoder.step(tokens, copies)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            # a random permutation of the beams inside each utterance
            rows = (torch.argsort(torch.rand(a, k, generator=g), 1) + torch.arange(a)[:, None] * k).view(-1)
            grouped.reorder_(rows)
            copies = copies.select(rows)
        keep = torch.tensor([0, 2])
        rows = (keep[:, None] * k + torch.arange(k)).view(-1)
        grouped, copies = grouped.select(rows, keep), copies.select(rows)
        tokens = torch.randint(3, 10, (rows.numel(),), generator=g)
        torch.testing.assert_close(model.decoder.step(tokens, grouped)[0], model.decoder.step(tokens, copies)[0],
                                   rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="needs the utterances"):
            grouped.select(rows)


def one_row_loss(model, batch: dict, utt: int, tgt: torch.Tensor, length: int) -> tuple[float, float]:
    """(summed label-smoothed CE, summed CTC) of one utterance with one target: the brute-force oracle."""
    single = {"ids": ["x"], "src": batch["src"][utt:utt + 1, :int(batch["src_lengths"][utt])],
              "src_lengths": batch["src_lengths"][utt:utt + 1], "tgt": tgt[None, :max(length, 1)],
              "tgt_lengths": torch.tensor([length])}
    logits, targets, memory, memory_lengths = model.decoder_logits(single)
    mask = targets != 0
    ce = F.cross_entropy(logits[mask], targets[mask], reduction="sum", label_smoothing=model.label_smoothing)
    ctc = model.ctc_loss(memory, memory_lengths, single["tgt"], single["tgt_lengths"]) * max(length, 1)
    return float(ce), float(ctc)


def test_weighted_nbest_loss_is_the_weighted_average_of_per_hypothesis_losses():
    """Each utterance's hypotheses share one encoder pass; the loss weighs every token by its row's weight."""
    torch.manual_seed(0)
    model = build_model(CONFIGS["conformer"]).eval()
    batch = batch_for("conformer")
    g = torch.Generator().manual_seed(1)
    rows = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = torch.tensor([0.5, 0.3, 0.2, 1.0, 0.9, 0.1])
    lengths = torch.tensor([5, 3, 6, 4, 1, 2])
    tgt = torch.randint(3, 40, (6, 6), generator=g)
    tgt[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    nbest_batch = {**batch, "tgt": tgt, "tgt_lengths": lengths, "tgt_utt": rows, "tgt_weight": weights}
    with torch.no_grad():
        loss, stats = model(nbest_batch)
        oracle = [one_row_loss(model, batch, int(rows[r]), tgt[r], int(lengths[r])) for r in range(6)]
    tokens = (weights * (lengths + 1).float()).sum()  # + <eos> per row
    ce = sum(float(w) * o[0] for w, o in zip(weights, oracle)) / float(tokens)
    ctc = sum(float(w) * o[1] for w, o in zip(weights, oracle)) / float((weights * lengths.float()).sum())
    assert stats["ce"] == pytest.approx(ce, rel=1e-4)
    assert stats["ctc"] == pytest.approx(ctc, rel=1e-4)
    assert float(loss) == pytest.approx(0.7 * ce + 0.3 * ctc, rel=1e-4)


def test_unit_weights_on_one_target_each_equal_the_plain_loss():
    torch.manual_seed(0)
    model = build_model(CONFIGS["conformer"]).eval()
    batch = batch_for("conformer")
    with torch.no_grad():
        plain, _ = model(batch)
        weighted, _ = model({**batch, "tgt_utt": torch.arange(3), "tgt_weight": torch.ones(3)})
    assert float(weighted) == pytest.approx(float(plain), rel=1e-5)
