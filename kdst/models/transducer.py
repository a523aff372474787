"""RNN transducer: transcriber (speech encoder) + predictor + joiner.

Takes the batch dict of kdst.models.encoder_decoder (``src``, ``src_lengths``,
``tgt``, ``tgt_lengths``; with ``tgt_utt``/``tgt_weight`` for several weighted
targets per utterance).  Blank (id 0) is both the transducer's blank and the
predictor's start symbol.

The joint network is ``output(tanh(W_enc enc[t] + W_pred pred[u]))``.  The two
projections are applied once per frame and once per predictor output (see
``project_encoder`` and ``predictor_step``), so that ``join`` during search is
just an addition, a tanh and the output layer.

``forward(batch)`` returns ``(loss, stats)`` with the RNN-T loss per target token and
the stats as 0-dim tensors (see kdst.models.protocol).
``forward(batch, teacher=TeacherOutputs(...))`` mixes in lattice KD (kdst.train.transducer_kd):
given the teacher's joint logits on the student's lattice, the KL at every node is
computed here from the student's own joint logits, and the loss is
``(1 - w) * RNNT + w * KD``: RNNT per target token, KD the (weighted) KL sum over the
lattice divided by ``teacher.normalize``'s count (nodes, tokens or utterances;
kdst.losses.rnnt.kd_normalizer).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from kdst.config import LstmPredictorConfig, StreamingEncoderConfig, TransducerConfig
from kdst.data.tokenizer import BLANK_ID
from kdst.errors import KdstError
from kdst.losses import rnnt_loss, rnnt_loss_and_kd
from kdst.losses.rnnt import kd_normalizer
from kdst.models.encoders import speech_encoder
from kdst.models.protocol import TeacherOutputs
from kdst.models.streaming import StreamingConformerEncoder

State = tuple[torch.Tensor, ...]  # predictor state: tensors with the row (batch) dimension first


class StatelessPredictor(nn.Module):
    """The last ``context_size`` labels, embedded and mixed by a depthwise Conv1d (Ghodsi et al. 2020)."""

    def __init__(self, vocab_size: int, dim: int = 256, context_size: int = 2):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, not {context_size}")
        self.context_size = context_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.conv = nn.Conv1d(dim, dim, context_size, groups=dim, bias=False)

    def _mix(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, U + context_size - 1) labels -> (N, U, dim)."""
        return F.relu(self.conv(self.embed(labels).transpose(1, 2)).transpose(1, 2))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        # Blanks before the start symbol stand for "no label yet", as in init_state.
        return self._mix(F.pad(labels, (self.context_size - 1, 0), value=BLANK_ID))

    def init_state(self, n: int, device) -> State:
        return (torch.full((n, self.context_size - 1), BLANK_ID, dtype=torch.long, device=device),)

    def step(self, last: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        context = torch.cat([state[0], last[:, None]], dim=1)
        return self._mix(context)[:, 0], (context[:, 1:],)


class LstmPredictor(nn.Module):
    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.lstm(self.dropout(self.embed(labels)))[0]

    def init_state(self, n: int, device) -> State:
        zeros = torch.zeros(n, self.lstm.num_layers, self.lstm.hidden_size, device=device)
        return zeros, zeros.clone()

    def step(self, last: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        # Rows first in the state (so search can index it like any other tensor); the LSTM wants layers first.
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        out, (h, c) = self.lstm(self.dropout(self.embed(last[:, None])), (h, c))
        return out[:, 0], (h.transpose(0, 1), c.transpose(0, 1))


class Joiner(nn.Module):
    def __init__(self, encoder_dim: int, predictor_dim: int, vocab_size: int, dim: int = 256):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, dim)
        self.predictor_proj = nn.Linear(predictor_dim, dim)
        self.output = nn.Linear(dim, vocab_size)

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Projected encoder and predictor outputs (broadcastable) -> logits."""
        return self.output(torch.tanh(enc + pred))


class Transducer(nn.Module):
    def __init__(self, encoder: nn.Module, predictor: nn.Module, joiner: Joiner, vocab_size: int,
                 ctc_weight: float = 0.0):
        super().__init__()
        self.encoder, self.predictor, self.joiner = encoder, predictor, joiner
        self.vocab_size = vocab_size
        self.ctc_weight = ctc_weight
        # An auxiliary CTC head helps the encoder learn to align early in training.
        self.ctc = nn.Linear(joiner.encoder_proj.in_features, vocab_size) if ctc_weight > 0 else None

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, T', D) and its lengths."""
        return self.encoder(src, src_lengths)

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        """(..., D) encoder output -> (..., J), the encoder side of ``join``."""
        return self.joiner.encoder_proj(enc)

    def init_predictor_state(self, n: int, device=None) -> State:
        return self.predictor.init_state(n, device or self.joiner.output.weight.device)

    def predictor_step(self, last_labels: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(N,) last emitted labels (blank at the start) -> projected predictor output (N, J), new state."""
        out, state = self.predictor.step(last_labels, state)
        return self.joiner.predictor_proj(out), state

    def join(self, enc_frames: torch.Tensor, pred_out: torch.Tensor) -> torch.Tensor:
        """Projected encoder frames and predictor outputs (broadcastable, last dim J) -> logits (..., V)."""
        return self.joiner(enc_frames, pred_out)

    @staticmethod
    def select_state(state: State, rows: torch.Tensor) -> State:
        return tuple(s[rows] for s in state)

    def _joint(self, batch: dict):
        enc, enc_lengths = self.encode(batch["src"], batch["src_lengths"])
        rows, row_lengths = enc, enc_lengths
        if "tgt_utt" in batch:  # several targets per utterance: the encoder ran once, the rest per target
            rows, row_lengths = enc[batch["tgt_utt"]], enc_lengths[batch["tgt_utt"]]
        tgt = batch["tgt"]
        labels = torch.cat([tgt.new_full((tgt.shape[0], 1), BLANK_ID), tgt], dim=1)
        pred = self.joiner.predictor_proj(self.predictor(labels))
        logits = self.join(self.project_encoder(rows)[:, :, None], pred[:, None])
        return logits, row_lengths, enc, enc_lengths

    def joint_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (R, T', U+1, V), their frame lengths (R,), the targets (R, U) and their lengths (R,)."""
        logits, logit_lengths, _, _ = self._joint(batch)
        return logits, logit_lengths, batch["tgt"], batch["tgt_lengths"]

    def forward(self, batch: dict, teacher: TeacherOutputs | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """With a ``teacher`` (its joint logits on this lattice) the transducer loss becomes
        ``(1 - teacher.weight) * RNNT + teacher.weight * KD``, RNNT per target token and KD per
        ``teacher.normalize`` unit; the stats report both parts."""
        logits, logit_lengths, enc, enc_lengths = self._joint(batch)
        tgt, tgt_lengths, weights = batch["tgt"], batch["tgt_lengths"], batch.get("tgt_weight")
        ntokens = tgt_lengths.sum()  # a tensor: reading it would wait for the device
        kd = None
        if teacher is not None:
            if teacher.logits.shape != logits.shape:
                raise KdstError(f"the teacher's joint lattice {tuple(teacher.logits.shape)} is not the student's "
                                 f"{tuple(logits.shape)}: teacher and student need one frame rate and one "
                                 f"vocabulary")
            # One call for both terms: on a GPU one fused pass over the lattice serves both.
            loss, kd = rnnt_loss_and_kd(logits, teacher.logits, tgt, logit_lengths, tgt_lengths, mode=teacher.mode,
                                        temperature=teacher.temperature, blank=BLANK_ID, reduction="sum",
                                        node_weights=teacher.node_weights)
            loss = loss / ntokens.clamp_min(1)
            denominator = kd_normalizer(teacher.normalize, logit_lengths, tgt_lengths, teacher.node_weights)
            kd = kd / denominator
        elif weights is None:
            loss = rnnt_loss(logits, tgt, logit_lengths, tgt_lengths, blank=BLANK_ID, reduction="sum")
            loss = loss / ntokens.clamp_min(1)
        else:  # sum_r w_r RNNT_r / sum_r w_r len_r, as the encoder-decoder's weighted losses
            per_row = rnnt_loss(logits, tgt, logit_lengths, tgt_lengths, blank=BLANK_ID, reduction="none")
            weights = weights.float()
            loss = (per_row * weights).sum() / (weights * tgt_lengths.float()).sum().clamp_min(1e-9)
        # nll: what validation and checkpoint selection read, the RNN-T loss per token (no acc for a transducer)
        stats = {"rnnt": loss.detach(), "nll": loss.detach(), "ntokens": ntokens.float()}
        if kd is not None:
            loss = (1 - teacher.weight) * loss + teacher.weight * kd
            stats["kd"] = kd.detach()
            # The papers' alpha this batch amounts to: the loss is proportional to
            # sum_b RNNT_b + alpha sum_b sum_{t,u} w(t,u) KL(t,u) (docs/KD_METHODS.md); inf at weight 1 (no
            # RNN-T term).  Always present: a scheduled weight may reach 1 within a log line.
            ratio = teacher.weight / (1 - teacher.weight) if teacher.weight < 1 else float("inf")
            stats["kd_alpha"] = (ratio * ntokens.clamp_min(1) / denominator).detach().float()
        if self.ctc is not None:
            log_probs = self.ctc(enc).float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
            if "tgt_utt" in batch:
                log_probs, enc_lengths = log_probs[:, batch["tgt_utt"]], enc_lengths[batch["tgt_utt"]]
            per_row = F.ctc_loss(log_probs, tgt, enc_lengths, tgt_lengths, blank=BLANK_ID, reduction="none",
                                 zero_infinity=True)
            w = weights.float() if weights is not None else torch.ones_like(per_row)
            ctc = (per_row * w).sum() / (w * tgt_lengths.float()).sum().clamp_min(1e-9)
            loss = (1 - self.ctc_weight) * loss + self.ctc_weight * ctc
            stats["ctc"] = ctc.detach()
        stats["loss"] = loss.detach()
        return loss, stats


def build_transducer(config: TransducerConfig) -> Transducer:
    """Build from the ``model`` section of a training config (``type: transducer``, kdst.config.model)."""
    if config.vocab_size is None:
        raise KdstError("model.vocab_size is not set (the trainer takes it from data.tokenizer)")
    e = config.encoder
    if isinstance(e, StreamingEncoderConfig):
        encoder = StreamingConformerEncoder(config.input_dim, e.d_model, layers=e.layers, heads=e.heads,
                                            ff_dim=e.ff_dim, kernel_size=e.kernel_size, dropout=e.dropout,
                                            subsampling_channels=e.subsampling_channels, chunk_size=e.chunk_size,
                                            left_chunks=e.left_chunks)
    else:
        encoder = speech_encoder(e, config.input_dim, e.d_model)
    p = config.predictor
    if isinstance(p, LstmPredictorConfig):
        predictor = LstmPredictor(config.vocab_size, p.dim, layers=p.layers, dropout=p.dropout)
    else:
        predictor = StatelessPredictor(config.vocab_size, p.dim, context_size=p.context_size)
    joiner = Joiner(e.d_model, p.dim, config.vocab_size, dim=config.joiner.dim)
    return Transducer(encoder, predictor, joiner, config.vocab_size, ctc_weight=config.ctc_weight)
