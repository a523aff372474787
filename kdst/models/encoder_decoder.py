"""One attention encoder-decoder for speech translation, ASR and MT.

A batch is a dict:

    ids          list[str]           utterance ids (for error messages and teacher outputs)
    src          (B, T, F) float     features, or (B, S) long source tokens for MT
    src_lengths  (B,) long
    tgt          (B, U) long         target token ids without <sos>/<eos>, padded with 0
    tgt_lengths  (B,) long

and, when an utterance has several weighted targets (N-best pseudo labels,
kdst.data.nbest_targets), ``tgt``/``tgt_lengths`` hold R >= B rows and

    tgt_utt      (R,) long           the utterance (row of src) of each target row
    tgt_weight   (R,) float          its weight; the losses average over rows by weight

``forward(batch)`` returns ``(loss, stats)``: the loss to minimise (a scalar,
normalised by the number of target tokens) and statistics to log, 0-dim tensors
(see kdst.models.protocol).  ``forward(batch, teacher=TeacherOutputs(...))``
mixes in word-level KD (kdst.train.kd): the teacher's logits, or its cached top-k,
at every decoder position, and ``(1 - w) * CE + w * KD`` with the KL computed
here from the student's own logits (``kd_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdst.config import EncoderDecoderConfig, TextEncoderConfig
from kdst.data.tokenizer import BLANK_ID, SOS_EOS_ID
from kdst.errors import KdstError
from kdst.losses import word_kd_loss
from kdst.models.decoder import TransformerDecoder
from kdst.models.encoders import TextEncoder, lengths_to_mask, speech_encoder
from kdst.models.protocol import TeacherOutputs


def decoder_io(tgt: torch.Tensor, tgt_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder input ``<sos> y`` and output ``y <eos>``, both (B, U+1), padded with 0."""
    b = tgt.shape[0]
    sos = tgt.new_full((b, 1), SOS_EOS_ID)
    inputs = torch.cat([sos, tgt], dim=1)
    outputs = torch.cat([tgt, tgt.new_full((b, 1), BLANK_ID)], dim=1)
    outputs[torch.arange(b, device=tgt.device), tgt_lengths] = SOS_EOS_ID
    return inputs, outputs


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: TransformerDecoder, vocab_size: int, d_model: int,
                 ctc_weight: float = 0.0, label_smoothing: float = 0.1, ctc_vocab_size: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.vocab_size = vocab_size
        self.ctc_weight = ctc_weight
        self.label_smoothing = label_smoothing
        # CTC over the target vocabulary (ASR), or over the source transcript's (ST: batches
        # then carry ctc_tgt), which teaches the speech encoder to align from the start.
        self.ctc = nn.Linear(d_model, ctc_vocab_size or vocab_size) if ctc_weight > 0 else None

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, T', D) and its lengths."""
        return self.encoder(src, src_lengths)

    def decoder_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder logits (B, U+1, V), the targets they predict, encoder output and lengths."""
        memory, memory_lengths = self.encode(batch["src"], batch["src_lengths"])
        inputs, targets = decoder_io(batch["tgt"], batch["tgt_lengths"])
        # Several targets per utterance (tgt_utt): the encoder ran once, the decoder runs per target.
        logits = self.decoder(inputs, memory, lengths_to_mask(memory_lengths, memory.shape[1]), batch.get("tgt_utt"))
        return logits, targets, memory, memory_lengths

    def forward(self, batch: dict, teacher: TeacherOutputs | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """With a ``teacher`` the attention loss becomes ``(1 - teacher.weight) * CE + teacher.weight * KD``;
        the stats report both parts."""
        logits, targets, memory, memory_lengths = self.decoder_logits(batch)
        weights = batch.get("tgt_weight")
        # word-level KD sets the gold term's label smoothing itself (kd.label_smoothing)
        loss, stats = self.attention_loss(logits, targets, weights,
                                          label_smoothing=None if teacher is None else teacher.label_smoothing)
        if teacher is not None and (teacher.logits is not None or teacher.topk_indices is not None):  # word-level
            if weights is not None:
                raise ValueError("word-level KD on weighted N-best targets is not supported")
            kd = self.kd_loss(logits, targets, teacher)
            loss = (1 - teacher.weight) * loss + teacher.weight * kd
            stats["kd"] = kd.detach()
        if self.ctc is not None:
            if "ctc_tgt" in batch:
                ctc = self.ctc_loss(memory, memory_lengths, batch["ctc_tgt"], batch["ctc_tgt_lengths"])
            elif weights is not None:
                ctc = self.ctc_loss(memory, memory_lengths, batch["tgt"], batch["tgt_lengths"], weights,
                                    rows=batch["tgt_utt"])
            else:
                ctc = self.ctc_loss(memory, memory_lengths, batch["tgt"], batch["tgt_lengths"])
            stats["ctc"] = ctc.detach()
            if teacher is not None and teacher.ctc_logits is not None:  # frame-level KD (kdst.train.frame_kd)
                if weights is not None:
                    raise ValueError("frame-level KD on weighted N-best targets is not supported")
                ctc_kd = self.ctc_kd_loss(memory, memory_lengths, teacher,
                                          batch["ctc_tgt_lengths"] if "ctc_tgt" in batch else batch["tgt_lengths"])
                ctc = (1 - teacher.ctc_weight) * ctc + teacher.ctc_weight * ctc_kd
                stats["ctc_kd"] = ctc_kd.detach()
            loss = (1 - self.ctc_weight) * loss + self.ctc_weight * ctc
        stats["loss"] = loss.detach()
        return loss, stats

    def kd_loss(self, logits: torch.Tensor, targets: torch.Tensor, teacher: TeacherOutputs) -> torch.Tensor:
        """Word-level KD per counted token (real tokens and <eos>) between ``logits`` and the teacher's."""
        mask = targets != BLANK_ID
        t = teacher.temperature
        if teacher.logits is not None:
            kd = word_kd_loss(logits[mask], teacher.logits[mask], temperature=t)
        else:
            indices, values = teacher.topk_indices[mask], teacher.topk_values[mask]
            if teacher.sampled:
                # Counts c_j of tokens drawn from the teacher: p_T = c_j / sum(c), which the loss gets
                # as softmax(log(c) * T / T); empty slots (c = 0) get p_T = 0.
                values = torch.log(values) * t
            rest = teacher.rest_log_mass[mask] if teacher.rest_log_mass is not None else None
            kd = word_kd_loss(logits[mask], topk_indices=indices, topk_logits=values, rest_log_mass=rest, temperature=t)
        if teacher.t2_scale:
            kd = kd * t * t
        return kd

    def ctc_kd_loss(self, memory: torch.Tensor, memory_lengths: torch.Tensor, teacher: TeacherOutputs,
                    tgt_lengths: torch.Tensor) -> torch.Tensor:
        """Frame-level KL(teacher || student) between CTC posteriors at ``teacher.ctc_temperature`` over the real
        frames (padding contributes 0), summed and divided by the CTC target tokens (``ctc_normalize`` "tokens",
        the CTC loss's own normaliser) or by the real frames ("frames")."""
        student = self.ctc(memory).float()
        if teacher.ctc_logits.shape != student.shape:
            raise KdstError(f"the teacher's CTC posteriors {tuple(teacher.ctc_logits.shape)} are not shaped like the "
                            f"student's {tuple(student.shape)}: frame-level KD needs one frame rate and one CTC "
                            "vocabulary")
        mask = lengths_to_mask(memory_lengths, student.shape[1])
        kl = word_kd_loss(student.flatten(0, 1), teacher.ctc_logits.float().flatten(0, 1), mask=mask.flatten(),
                          temperature=teacher.ctc_temperature, reduction="sum")
        if teacher.ctc_normalize == "frames":
            return kl / mask.sum().clamp_min(1)
        return kl / tgt_lengths.sum().clamp_min(1)

    def attention_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                       label_smoothing: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Label-smoothed cross-entropy per counted token; stats hold the plain NLL and accuracy too.
        ``label_smoothing``: instead of the model's own (word-level KD's gold term).

        With row ``weights`` every token of a row counts ``weight`` times, so the loss
        is sum_r w_r CE_r / sum_r w_r len_r: for an utterance with N-best targets whose
        weights sum to 1, the posterior-weighted average of its per-hypothesis losses.
        """
        if weights is not None:
            return self._weighted_attention_loss(logits, targets, weights)
        mask = targets != BLANK_ID
        flat_logits, flat_targets = logits[mask].float(), targets[mask]
        ntokens = mask.sum().clamp_min(1)  # a tensor: reading it would wait for the device
        smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
        loss = F.cross_entropy(flat_logits, flat_targets, reduction="sum", label_smoothing=smoothing) / ntokens
        with torch.no_grad():
            nll = F.cross_entropy(flat_logits, flat_targets, reduction="sum") / ntokens
            acc = (flat_logits.argmax(-1) == flat_targets).float().sum() / ntokens
        return loss, {"ce": loss.detach(), "nll": nll, "acc": acc, "ntokens": ntokens.float()}

    def _weighted_attention_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
                                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = targets != BLANK_ID
        flat_logits, flat_targets = logits[mask].float(), targets[mask]
        token_weights = weights.float()[:, None].expand_as(targets)[mask]
        total = token_weights.sum().clamp_min(1e-9)
        ce = F.cross_entropy(flat_logits, flat_targets, reduction="none", label_smoothing=self.label_smoothing)
        loss = (ce * token_weights).sum() / total
        with torch.no_grad():
            nll = (F.cross_entropy(flat_logits, flat_targets, reduction="none") * token_weights).sum() / total
            acc = ((flat_logits.argmax(-1) == flat_targets).float() * token_weights).sum() / total
        return loss, {"ce": loss.detach(), "nll": nll, "acc": acc, "ntokens": mask.sum().float()}

    def ctc_loss(self, memory: torch.Tensor, memory_lengths: torch.Tensor, tgt: torch.Tensor,
                 tgt_lengths: torch.Tensor, weights: torch.Tensor | None = None,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """CTC per target token; with row ``weights``, sum_r w_r CTC_r / sum_r w_r len_r.

        ``rows`` maps each target row to its utterance: the CTC posteriors are computed
        once per utterance and shared by its N-best rows.
        """
        log_probs = self.ctc(memory).float().log_softmax(-1)
        if rows is not None:
            log_probs, memory_lengths = log_probs[rows], memory_lengths[rows]
        log_probs = log_probs.transpose(0, 1)  # (T, B, V)
        if weights is None:
            loss = F.ctc_loss(log_probs, tgt, memory_lengths, tgt_lengths, blank=BLANK_ID, reduction="sum",
                              zero_infinity=True)
            return loss / tgt_lengths.sum().clamp_min(1)
        per_row = F.ctc_loss(log_probs, tgt, memory_lengths, tgt_lengths, blank=BLANK_ID, reduction="none",
                             zero_infinity=True)
        weights = weights.float()
        return (per_row * weights).sum() / (weights * tgt_lengths.float()).sum().clamp_min(1e-9)


def build_encoder_decoder(config: EncoderDecoderConfig) -> EncoderDecoder:
    """Build from the ``model`` section of a training config (kdst.config.model)."""
    if config.vocab_size is None:
        raise KdstError("model.vocab_size is not set (the trainer takes it from data.tokenizer)")
    e = config.encoder
    if isinstance(e, TextEncoderConfig):
        if config.src_vocab_size is None:
            raise KdstError("model.src_vocab_size is not set (the trainer takes it from data.src_tokenizer)")
        encoder = TextEncoder(config.src_vocab_size, config.d_model, layers=e.layers, heads=e.heads, ff_dim=e.ff_dim,
                              dropout=e.dropout)
    else:
        encoder = speech_encoder(e, config.input_dim, config.d_model)
    d = config.decoder
    decoder = TransformerDecoder(config.vocab_size, d_model=config.d_model, layers=d.layers, heads=d.heads,
                                 ff_dim=d.ff_dim, dropout=d.dropout)
    return EncoderDecoder(encoder, decoder, config.vocab_size, config.d_model, ctc_weight=config.ctc_weight,
                          label_smoothing=config.label_smoothing, ctc_vocab_size=config.ctc_vocab_size)
