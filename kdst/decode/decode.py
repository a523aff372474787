"""``kdst decode``: a data dir through a trained model's beam search, into hypotheses and n-best lists.

An attention encoder-decoder takes the beam search of kdst.decode.search; a transducer takes
the searches of kdst.decode.transducer_search: beam > 1 is modified beam search (``beam``,
``nbest``), ``greedy`` or beam 1 is greedy search with at most ``max_symbols_per_frame``
labels per frame.  The length options (penalty, max/min length) apply to encoder-decoders
only; a transducer's score is its log-probability.  ``--ctc-weight`` > 0 is joint CTC/attention
beam search (docs/DECODING.md), for an encoder-decoder whose CTC branch predicts its output
vocabulary; the n-best scores are then the joint ones.  ``--normalize`` writes the texts normalised
(kdst.data.text_norm: a teacher that writes cased, punctuated text, as Whisper does, scored against
upper-case references).  A model that reads its own features (a Whisper teacher: kdst hf-features)
checks that the data dir holds them.

Outputs in ``out_dir`` (see docs/FORMATS.md):

    hyp.txt             <utt> <1-best text>                  (Kaldi text, sorted)
    nbest.txt           <utt>-<rank> <score> <logprob> <text> (rank 1 = best)
    decode_stats.json   utterances, seconds, sentences/s, real-time factor (speech), parameters,
                        the conditions (device, jobs, threads per job, beam) and the checkpoint
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from kdst.data.dataset import iterate, make_batches, make_dataset
from kdst.data.files import atomic_write_text
from kdst.data.kaldi_dir import require_directory
from kdst.data.text_norm import normalize_text
from kdst.data.split import merge_scp
from kdst.decode import transducer_search
from kdst.decode.search import SearchOptions, beam_search, greedy_search
from kdst.errors import KdstError
from kdst.models import Transducer
from kdst.models.ensemble import EnsembleTeacher, load_teachers, model_files

log = logging.getLogger("kdst.decode")
FRAME_SHIFT_S = 0.01  # of the features, for the real-time factor


def decode_data_dir(model: str | list[str], data_dir: str | Path, out_dir: str | Path,
                    options: SearchOptions = SearchOptions(), *, greedy: bool = False, batch_units: int = 20000,
                    device: str | None = None, max_symbols_per_frame: int = 3, src_text: str | None = None,
                    weights: list[float] | None = None, normalize: str = "none") -> dict:
    """Decode every utterance of ``data_dir`` with ``model``, a teacher reference (kdst.models.teacher:
    a kdst checkpoint or espnet:PATH); returns the statistics it also writes.  ``src_text``: an MT
    model's source text file in the data dir, if not the one it was trained with.  Several models: the beam
    search of their ensemble (kdst.models.ensemble), weighted by ``weights``."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if batch_units < 1:
        raise KdstError(f"--batch-units must be >= 1, not {batch_units}")
    if max_symbols_per_frame < 1:
        raise KdstError(f"--max-symbols-per-frame must be >= 1, not {max_symbols_per_frame}")
    require_directory(out_dir, "output directory")  # before the model is loaded, not after the search
    loaded = load_teachers(model, device, weights, src_text=src_text)
    tokenizer = loaded.tokenizer
    model = loaded.model
    if options.ctc_weight > 0:
        check_joint_decoding(loaded, greedy)
    if isinstance(model, Transducer):
        greedy = greedy or options.beam == 1
    check_data_dir = getattr(model, "check_data_dir", None)
    if check_data_dir is not None:
        check_data_dir(data_dir)
    normalize_text("", normalize)  # an unknown normaliser fails before the search, not after
    dataset = make_dataset(loaded.data, data_dir, with_targets=False)
    batches = make_batches(dataset.src_lengths, batch_units, shuffle=False)  # similar lengths together
    hyps: dict[str, str] = {}
    nbest_lines: list[tuple[str, str]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(dataset.ids), desc="decode", disable=not sys.stderr.isatty(), mininterval=1.0)
    with torch.inference_mode():
        for batch in iterate(dataset, batches):
            src, lengths = batch["src"].to(device), batch["src_lengths"].to(device)
            if isinstance(model, Transducer) and greedy:
                results = [[h] for h in transducer_search.greedy_search(model, src, lengths, max_symbols_per_frame)]
            elif isinstance(model, Transducer):
                results = transducer_search.modified_beam_search(model, src, lengths, beam=options.beam,
                                                                 nbest=options.nbest)
            elif greedy:
                results = [[h] for h in greedy_search(model, src, lengths, options.max_len_ratio,
                                                      options.max_len_bias, options.max_len)]
            else:
                results = beam_search(model, src, lengths, options)
            for utt, nbest in zip(batch["ids"], results):
                texts = [one_line(normalize_text(tokenizer.decode(h.tokens), normalize)) for h in nbest]
                hyps[utt] = texts[0] if texts else ""
                for rank, (h, text) in enumerate(zip(nbest, texts), start=1):
                    nbest_lines.append((f"{utt}-{rank}", f"{h.score:.6f} {h.logprob:.6f} {text}".rstrip()))
            bar.update(len(batch["ids"]))
    bar.close()
    seconds = time.perf_counter() - start
    out = Path(out_dir)
    atomic_write_text(out / "hyp.txt", "".join(f"{u} {hyps[u]}".rstrip() + "\n" for u in sorted(hyps)))
    atomic_write_text(out / "nbest.txt", "".join(f"{k} {v}\n" for k, v in sorted(nbest_lines)))
    stats = {"utterances": len(hyps), "seconds": round(seconds, 3),
             "sentences_per_s": round(len(hyps) / max(seconds, 1e-9), 2),
             "params": sum(p.numel() for p in model.parameters()), "device": str(device),
             "beam": 1 if greedy else options.beam, "jobs": 1, "threads": torch.get_num_threads(),
             "ctc_weight": options.ctc_weight,
             "checkpoint": " + ".join(str(Path(f).resolve()) for f in model_files(loaded))}
    if loaded.data.input == "speech":
        audio_s = sum(dataset.src_lengths.values()) * FRAME_SHIFT_S
        stats["rtf"] = round(seconds / max(audio_s, 1e-9), 4)
    atomic_write_text(out / "decode_stats.json", json.dumps(stats, indent=1) + "\n")
    log.info("%s: %d utterances in %.1f s (%.1f sentences/s)", out, len(hyps), seconds, stats["sentences_per_s"])
    return stats


def one_line(text: str) -> str:
    """A hypothesis as one line of a Kaldi text file: a byte-level vocabulary (Whisper's, GPT-2's) can decode to
    line breaks and tabs, which would split the line and shift every utterance after it."""
    return " ".join(text.split())


def check_joint_decoding(loaded, greedy: bool) -> None:
    """KdstError unless ``loaded`` (a kdst.models.teacher.Teacher) can be decoded with a CTC weight."""
    what = f"--ctc-weight: {loaded.reference}"
    if isinstance(loaded.model, Transducer):
        raise KdstError(f"{what} is a transducer (joint CTC/attention decoding is for encoder-decoders)")
    if greedy:
        raise KdstError("--ctc-weight needs beam search: use --beam 1 instead of --greedy")
    if isinstance(loaded, EnsembleTeacher):
        raise KdstError("--ctc-weight: an ensemble has no CTC branch (joint CTC/attention decoding takes one model)")
    if getattr(loaded.model, "ctc", None) is None:
        raise KdstError(f"{what} has no CTC branch (it was trained with model.ctc_weight 0)")
    data = loaded.data
    if data.ctc_text and (data.ctc_text, data.ctc_tokenizer) != (data.text, data.tokenizer):
        raise KdstError(f"{what}: its CTC branch predicts {data.ctc_text} (data.ctc_text), "
                        f"not the output vocabulary")


def merge_job_outputs(job_dirs: list[Path], out_dir: Path, seconds: float) -> dict:
    """Merge the outputs of parallel decoding jobs; ``seconds`` is their wall time together."""
    for name in ("hyp.txt", "nbest.txt"):
        merge_scp([d / name for d in job_dirs], out_dir / name)
    parts = [json.loads((d / "decode_stats.json").read_text()) for d in job_dirs]
    total = sum(p["utterances"] for p in parts)
    stats = {**parts[0], "utterances": total, "seconds": round(seconds, 3), "jobs": len(job_dirs),
             "sentences_per_s": round(total / max(seconds, 1e-9), 2)}
    if "rtf" in stats:
        audio_s = sum(p["seconds"] / p["rtf"] for p in parts)
        stats["rtf"] = round(seconds / audio_s, 4)
    atomic_write_text(out_dir / "decode_stats.json", json.dumps(stats, indent=1) + "\n")
    return stats
