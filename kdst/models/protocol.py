"""What a model's ``forward`` returns, and what it gets from a teacher.

Every trainable model (kdst.models.encoder_decoder, kdst.models.transducer) has

    forward(batch, teacher: TeacherOutputs | None = None) -> (loss, stats)

``loss`` is the scalar to minimise.  ``stats`` maps names to 0-dim tensors,
detached, on the batch's device: per-token averages (``loss``, ``nll``, ``ce``,
``acc``, ``kd``, ``ctc``, ``rnnt``) and ``ntokens``, the number of target tokens
they average over.  They stay tensors so that a training step never waits for
the device; the trainer weights them by ``ntokens`` and reads them back once per
log line.

``teacher`` is the teacher's view of the same batch, computed by a KD wrapper
(kdst.train.kd: ``WordKD``; kdst.train.transducer_kd: ``TransducerKD``) before the student runs.  The
student computes the KD term itself from its own logits and mixes it in as
``(1 - weight) * loss + weight * KD``.  What the teacher gives, by student:

    encoder-decoder (word-level KD), at the U+1 decoder positions of ``decoder_io``:
        logits        (B, U+1, V)       the teacher's full next-token logits (online teacher), or
        topk_indices  (B, U+1, k) long  and
        topk_values   (B, U+1, k)       its top-k logits, or, with ``sampled``, counts of tokens
                                        drawn from it (a cache; padding rows are masked out)
        rest_log_mass (B, U+1)          with top-k logits, optionally: log of the teacher's mass outside
                                        them at T (top-k plus the rest instead of renormalising)
        t2_scale                        multiply the KD term by T^2 (Hinton et al.)
        label_smoothing                 of the gold CE term while distilling (None: the model's own)
    encoder-decoder with a CTC branch (frame-level KD, kdst.train.frame_kd), at the student's T' frames:
        ctc_logits    (B, T', V_ctc)    the teacher's CTC logits (no word-level fields: frame-level KD alone)
        ctc_weight, ctc_temperature, ctc_normalize
    transducer (lattice KD):
        logits        (R, T', U+1, V)   the teacher's joint logits on the student's lattice
        mode                            "full" or "collapsed" (kdst.losses.rnnt)
        normalize                       what the KL sum is divided by: "nodes", "tokens" or "utterances"
        node_weights  (R, T', U+1)      each node's weight in that sum (the teacher's occupancy), or None: 1

and for both ``weight`` and ``temperature``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TeacherOutputs:
    weight: float  # loss = (1 - weight) * the student's own loss + weight * KD
    temperature: float = 1.0
    logits: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    sampled: bool = False  # topk_values are counts of sampled tokens, not logits
    t2_scale: bool = False
    mode: str = "full"  # transducer lattice KD: "full" or "collapsed"
    normalize: str = "nodes"  # transducer lattice KD: kdst.losses.rnnt.kd_normalizer
    node_weights: torch.Tensor | None = None  # transducer lattice KD: (R, T', U+1) weights of the nodes' KL
    ctc_logits: torch.Tensor | None = None  # frame-level KD: the teacher's CTC logits (B, T', V_ctc)
    ctc_weight: float = 0.0  # the student's CTC branch becomes (1 - ctc_weight) * CTC + ctc_weight * KL
    ctc_temperature: float = 1.0
    ctc_normalize: str = "tokens"  # the KL summed over frames per CTC target token, or "frames": per frame
    rest_log_mass: torch.Tensor | None = None  # word-level KD, top-k plus the rest: (B, U+1) log teacher mass outside
    label_smoothing: float | None = None  # word-level KD: of the gold CE term (None: the model's own)
