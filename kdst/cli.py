"""``kdst <subcommand>``: thin argument parsing over the modules below.

Every subcommand is one row of :func:`commands`: a name, its help, a function
adding its options to a parser and a function running it on the parsed
options.  The modules that own a program provide the two functions
themselves (``add_arguments``, ``run``); the small ones live here.  Every
user-fixable problem (a KdstError) is printed as one line and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdst.errors import DataError, KdstError


@dataclass(frozen=True)
class Command:
    name: str
    help: str | None  # None: hidden from ``kdst -h`` (the split jobs' own subcommand)
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- data dirs ------------------------------------------------------------------------------

def add_validate_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+")
    p.add_argument("--no-audio", action="store_true", help="do not open the audio (faster)")
    p.add_argument("--deep", action="store_true", help="read every feature matrix of feats.scp (slower)")


def run_validate_data(args: argparse.Namespace) -> int:
    from kdst.data.validate import validate_data_dir

    status = 0
    for directory in args.dirs:
        problems = validate_data_dir(directory, check_audio=not args.no_audio, deep=args.deep)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
            status = 1
        else:
            print(f"{directory}: OK")
    return status


def add_fix_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dirs", nargs="+")
    p.add_argument("--check-audio", action="store_true", help="also drop utterances whose audio is unreadable")


def run_fix_data(args: argparse.Namespace) -> int:
    from kdst.data.validate import fix_data_dir

    for directory in args.dirs:
        report = fix_data_dir(directory, check_audio=args.check_audio)
        print(f"{directory}: {report} (originals in {Path(directory) / '.backup'})")
    return 0


def add_split_options(p: argparse.ArgumentParser) -> None:
    """``--nj`` and ``--cmd`` of the commands that run as jobs over a split data dir (kdst.launch.split)."""
    p.add_argument("--nj", type=int, default=1, help="parallel jobs")
    p.add_argument("--cmd", help="launcher for the jobs, as in cmd.sh (default: kdst launch on this machine)")


def jobs_for(data_dir: Path, nj: int) -> int:
    """A job reads whole recordings, so there can be no more jobs than recordings."""
    from kdst.data.kaldi_dir import DataDir

    return min(nj, len(set(DataDir(data_dir).recording_of().values())))


def add_split_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("options", type=Path, help="the options file written by kdst.launch.split")
    p.add_argument("job", type=int, help="the job number (its part of the split data dir)")


def run_split_job(args: argparse.Namespace) -> int:
    """One job of a split command: that command, on the options of the file, for part ``job``."""
    from kdst.launch.split import read_job_options

    job = read_job_options(args.options, args.job)
    by_name = {c.name: c for c in commands()}
    if job.command not in by_name:
        raise KdstError(f"{args.options}: unknown command '{job.command}'")
    return by_name[job.command].run(job)


def add_fbank_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", type=Path)
    p.add_argument("feat_dir", type=Path, help="where the ark/scp shards and logs go")
    p.add_argument("--config", type=Path, help="YAML of fbank options (conf/fbank.yaml)")
    add_split_options(p)
    p.add_argument("--name", help=argparse.SUPPRESS)  # of the shard: set for the jobs of a split data dir


def run_fbank(args: argparse.Namespace) -> int:
    from kdst.data.features import FbankOptions, write_fbank_shard
    from kdst.data.kaldi_dir import merge_into_data_dir, require_directory
    from kdst.launch.split import JOB, run_split

    options = FbankOptions.from_yaml(args.config)  # a bad config fails here, not in every job
    require_directory(args.feat_dir, "feature directory")
    name = args.name or f"raw_fbank_{Path(args.data_dir).name}"
    nj = jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        scp = write_fbank_shard(args.data_dir, args.feat_dir, name, options)
        if args.name is None:  # a whole data dir, not a job of a split one
            merge_into_data_dir(args.data_dir, [scp])
        return 0
    status = run_split(args, args.data_dir, nj, log=Path(args.feat_dir) / "log" / f"{name}.JOB.log", cmd=args.cmd,
                       per_job={"name": f"{name}.{JOB}"})
    if status == 0:
        merge_into_data_dir(args.data_dir, [Path(args.feat_dir) / f"{name}.{j}.scp" for j in range(1, nj + 1)])
    return status


# --- teachers and decoding ----------------------------------------------------------------

def add_model_option(p: argparse.ArgumentParser, *names: str, what: str) -> None:
    """The one option naming a model by a teacher reference, and the deprecated --teacher-espnet DIR."""
    p.add_argument(*names, dest="model", metavar="REF", action="append",
                   help=f"{what}: a kdst checkpoint (exp/x/avg_best5.pt), espnet:DIR (an ESPnet2 exp dir, "
                        f"packed zip or config.yaml) or hf:PATH (a Hugging Face model, docs/HF_TEACHERS.md); "
                        f"repeated: their ensemble (kdst.models.ensemble)")
    p.add_argument("--teacher-weights", type=float, nargs="+", metavar="W",
                   help=f"an ensemble's weights, one per {names[0]} (normalised; default: uniform)")
    p.add_argument("--teacher-espnet", type=Path, metavar="DIR", help=f"deprecated: {names[0]} espnet:DIR")
    p.add_argument("--src-text", help="MT model: the source text file of the data dir (default: the model's own)")


def model_reference(args: argparse.Namespace, option: str) -> list[str]:
    """The models of --model/--teacher (several: an ensemble), or of the deprecated --teacher-espnet DIR."""
    if args.model is not None and args.teacher_espnet is not None:
        raise KdstError(f"{option} and --teacher-espnet both name a model: give one "
                        f"({option} espnet:DIR for an ESPnet model)")
    if args.teacher_espnet is not None:
        return [f"espnet:{args.teacher_espnet}"]
    if args.model is None:
        raise KdstError(f"no model: give {option} CHECKPOINT or {option} espnet:DIR")
    return args.model


def for_jobs(args: argparse.Namespace, references: list[str]) -> argparse.Namespace:
    """``args`` as the split jobs get them: absolute model references (jobs may start elsewhere)."""
    from kdst.models.teacher import absolute_reference

    return argparse.Namespace(**{**vars(args), "model": [absolute_reference(r) for r in references],
                                 "teacher_espnet": None})


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    add_model_option(p, "--model", "--checkpoint", what="the model to decode with")
    p.add_argument("--espnet-rule", action="store_true",
                   help="ESPnet BeamSearch's pruning and length rules (kdst.decode.search)")
    p.add_argument("--hf-rule", action="store_true",
                   help="an hf: model: Hugging Face generate()'s beam search rules (docs/HF_TEACHERS.md)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--beam", type=int, default=5, help="hypotheses kept per utterance and step")
    p.add_argument("--nbest", type=int, default=1, help="hypotheses written per utterance to nbest.txt (<= --beam)")
    p.add_argument("--greedy", action="store_true", help="greedy search instead of beam search")
    p.add_argument("--length-penalty", type=float, default=1.0, help="score = logprob / length**this")
    p.add_argument("--max-len-ratio", type=float, default=1.0, help="of the encoder output length")
    p.add_argument("--max-len-bias", type=int, default=5, help="tokens added to the maximum length")
    p.add_argument("--min-len-ratio", type=float, default=0.0, help="of the encoder output length: no <eos> before")
    p.add_argument("--ctc-weight", type=float, default=0.0,
                   help="joint CTC/attention: (1-w) attention + w CTC prefix score (docs/DECODING.md); 0: off")
    p.add_argument("--ctc-pre-beam", type=float, default=1.5,
                   help="with --ctc-weight: CTC scores this x --beam best attention tokens per beam (0: all)")
    p.add_argument("--max-symbols-per-frame", type=int, default=3,
                   help="transducer greedy search (--greedy or --beam 1): most labels emitted on one frame")
    p.add_argument("--batch-units", type=int, default=20000, help="padded frames (or tokens) per batch")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--normalize", choices=("none", "upper", "lower"), default="none",
                   help="write the texts normalised: upper or lower case, no punctuation (kdst.data.text_norm; a "
                        "Whisper teacher against upper-case references)")
    add_split_options(p)


def run_decode(args: argparse.Namespace) -> int:
    from kdst.data.kaldi_dir import require_directory
    from kdst.decode.decode import decode_data_dir, merge_job_outputs
    from kdst.decode.search import SearchOptions
    from kdst.launch.split import JOB, run_split

    model = model_reference(args, "--model")
    options = SearchOptions(beam=args.beam, nbest=args.nbest, max_len_ratio=args.max_len_ratio,
                            max_len_bias=args.max_len_bias, min_len_ratio=args.min_len_ratio,
                            length_penalty=args.length_penalty, espnet_rule=args.espnet_rule, hf_rule=args.hf_rule,
                            ctc_weight=args.ctc_weight, ctc_pre_beam=args.ctc_pre_beam)
    require_directory(args.output_dir, "output directory")
    nj = jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        decode_data_dir(model, args.data_dir, args.output_dir, options, greedy=args.greedy,
                        batch_units=args.batch_units, device=args.device,
                        max_symbols_per_frame=args.max_symbols_per_frame, src_text=args.src_text,
                        weights=args.teacher_weights, normalize=args.normalize)
        return 0
    start = time.perf_counter()
    jobs_dir = args.output_dir.resolve() / f"split{nj}"
    status = run_split(for_jobs(args, model), args.data_dir, nj, log=args.output_dir / "log" / "decode.JOB.log",
                       cmd=args.cmd, per_job={"output_dir": jobs_dir / JOB})
    if status == 0:
        merge_job_outputs([jobs_dir / str(j) for j in range(1, nj + 1)], args.output_dir,
                          time.perf_counter() - start)
    return status


def add_topk_arguments(p: argparse.ArgumentParser) -> None:
    add_model_option(p, "--teacher", what="the MT teacher (or a Whisper teacher, with --teacher-data-dir)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--teacher-data-dir", type=Path, metavar="DIR",
                   help="a Whisper teacher: the copy of --data-dir with its features (kdst hf-features), joined to "
                        "--data-dir's targets by utterance id")
    p.add_argument("--out", type=Path, required=True, help="cache directory to write")
    p.add_argument("--k", type=int, default=8, help="entries (topk) or draws (sampled) per target token")
    p.add_argument("--mode", choices=("topk", "sampled"), default="topk")
    p.add_argument("--text", help="target text file of the data dir (default: the teacher's, e.g. text.de)")
    p.add_argument("--seed", type=int, default=1, help="for --mode sampled")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="the word-KD temperature: sampled draws from softmax(z/T); topk measures the mass outside "
                        "the k at T (kd.topk_rest); training refuses a cache made at another T where it matters")
    p.add_argument("--batch-units", type=int, default=20000,
                   help="padded tokens per batch (a Whisper teacher: frames, its whole window per utterance)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    add_split_options(p)


def run_topk(args: argparse.Namespace) -> int:
    from kdst.data.teacher_cache import merge_caches
    from kdst.launch.split import JOB, run_split
    from kdst.teacher.topk import summary, write_cache

    teacher = model_reference(args, "--teacher")
    nj = jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        write_cache(teacher, args.data_dir, args.out, k=args.k, mode=args.mode, text=args.text,
                    batch_units=args.batch_units, device=args.device, seed=args.seed, src_text=args.src_text,
                    weights=args.teacher_weights, temperature=args.temperature,
                    teacher_data_dir=args.teacher_data_dir)
    else:
        jobs_dir = args.out.resolve().parent / f"{args.out.name}.split{nj}"
        status = run_split(for_jobs(args, teacher), args.data_dir, nj, cmd=args.cmd,
                           log=args.out.parent / "log" / f"{args.out.name}.JOB.log", per_job={"out": jobs_dir / JOB})
        if status != 0:
            return status
        merge_caches([jobs_dir / str(j) for j in range(1, nj + 1)], args.out)
        shutil.rmtree(jobs_dir)
    print("\n".join(summary(args.out)))
    return 0


def add_espnet_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher-espnet", type=Path, required=True, help="ESPnet2 exp dir, packed zip or config.yaml")
    p.add_argument("--out", type=Path, required=True, help="kdst tokenizer directory to write")
    p.add_argument("--side", choices=("tgt", "src"), default="tgt", help="target or (MT) source vocabulary")


def add_hf_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, metavar="REF",
                   help="hf:PATH[,src=LANG,tgt=LANG] (a save_pretrained dir or a cached hub name)")
    p.add_argument("--out", type=Path, required=True, help="kdst tokenizer directory to write")
    p.add_argument("--side", choices=("tgt", "src"), default="tgt", help="target or source vocabulary")


def run_hf_tokenizer(args: argparse.Namespace) -> int:
    from kdst.models.hf_teacher import export_hf_tokenizer

    if not args.teacher.startswith("hf:"):
        raise KdstError(f"--teacher {args.teacher}: not a Hugging Face model (hf:PATH)")
    out = export_hf_tokenizer(args.teacher[3:], args.out, args.side)
    print(f"{out}: the {args.side} tokenizer of {args.teacher} as a kdst tokenizer (ids: docs/HF_TEACHERS.md)")
    return 0


def add_hf_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="hf:PATH of a Whisper model (a save_pretrained dir or a cached "
                                                    "hub name)")
    p.add_argument("data_dir", type=Path, help="a data dir with wav.scp (and segments)")
    p.add_argument("out_dir", type=Path, help="the data dir to write: data_dir's files with the Whisper features")
    p.add_argument("--feat-dir", type=Path, help="where the ark/scp shards go (default: OUT_DIR/arks)")
    add_split_options(p)
    p.add_argument("--name", help=argparse.SUPPRESS)  # of the shard: set for the jobs of a split data dir


def run_hf_features(args: argparse.Namespace) -> int:
    from kdst.launch.split import JOB, run_split
    from kdst.models.hf_bridge import absolute_spec
    from kdst.models.hf_whisper import check_output_dir, finish_features_dir, write_features_shard

    if not args.teacher.startswith("hf:"):
        raise KdstError(f"--teacher {args.teacher}: not a Hugging Face model (hf:PATH)")
    feat_dir = args.feat_dir or args.out_dir / "arks"
    if args.name is not None:  # a job of a split data dir
        write_features_shard(args.teacher[3:], args.data_dir, feat_dir, args.name)
        return 0
    check_output_dir(args.data_dir, args.out_dir)
    name = f"whisper_{Path(args.data_dir).name}"
    nj = jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        scps = [write_features_shard(args.teacher[3:], args.data_dir, feat_dir, name)]
    else:
        job_args = argparse.Namespace(**{**vars(args), "teacher": f"hf:{absolute_spec(args.teacher[3:])}",
                                         "feat_dir": feat_dir})
        status = run_split(job_args, args.data_dir, nj, log=feat_dir / "log" / f"{name}.JOB.log", cmd=args.cmd,
                           per_job={"name": f"{name}.{JOB}"})
        if status != 0:
            return status
        scps = [feat_dir / f"{name}.{j}.scp" for j in range(1, nj + 1)]
    out = finish_features_dir(args.data_dir, args.out_dir, scps)
    print(f"{out}: the data dir with the log-mel features of {args.teacher}")
    return 0


def run_espnet_tokenizer(args: argparse.Namespace) -> int:
    from kdst.models.espnet_bridge import export_tokenizer, resolve

    out = export_tokenizer(resolve(args.teacher_espnet), args.out, args.side)
    print(f"{out}: the {args.side} token list and BPE model of {args.teacher_espnet} as a kdst tokenizer")
    return 0


# --- features, tokenizers, corpora ----------------------------------------------------------

def add_compute_cmvn_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("feats_scp", type=Path)
    p.add_argument("out", type=Path)


def run_compute_cmvn(args: argparse.Namespace) -> int:
    from kdst.data.features import compute_global_cmvn

    stats = compute_global_cmvn(args.feats_scp, args.out)
    print(f"{args.out}: global CMVN over {int(stats[0, -1])} frames")
    return 0


def add_speed_perturb_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--factors", default="0.9,1.0,1.1", help="comma-separated speed factors; 1.0 keeps the originals")


def run_speed_perturb(args: argparse.Namespace) -> int:
    from kdst.data.features import speed_perturb_data_dir

    speed_perturb_data_dir(args.src, args.dst, speed_factors(args.factors))
    return 0


def speed_factors(text: str) -> list[float]:
    """The factors of ``--factors 0.9,1.0,1.1``: positive, finite, each once (they name the copies)."""
    factors: list[float] = []
    for item in text.split(","):
        try:
            factor = float(item)
        except ValueError:
            factor = math.nan
        if not 0 < factor < math.inf:
            raise KdstError(f"--factors {text}: '{item}' is not a positive speed factor "
                            f"(e.g. --factors 0.9,1.0,1.1)")
        if factor in factors:
            raise KdstError(f"--factors {text}: {factor:g} is given twice")
        factors.append(factor)
    return factors


def add_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("train", "encode", "decode"))
    p.add_argument("dir", type=Path, help="tokenizer directory")
    p.add_argument("inputs", nargs="*", help="train: Kaldi text files; encode/decode: a file (default stdin)")
    p.add_argument("--type", default="bpe", choices=("bpe", "unigram", "char"))
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--plain-text", action="store_true", help="train inputs are plain lines, not Kaldi text")
    p.add_argument("--user-symbols", type=Path, help="file of symbols kept whole, e.g. WSJ's <NOISE> (nlsyms)")
    p.add_argument("--keyed", action="store_true", help="encode/decode lines are 'key text' (Kaldi text)")


def run_tokenizer(args: argparse.Namespace) -> int:
    from kdst.data.tokenizer import decode_line, load_tokenizer, read_utf8_lines, train_tokenizer

    if args.action == "train":
        train_tokenizer(args.dir, args.inputs, type=args.type, vocab_size=args.vocab_size,
                        character_coverage=args.character_coverage, kaldi_text=not args.plain_text,
                        user_symbols=read_symbols(args.user_symbols) if args.user_symbols else ())
        print(f"{args.dir}: {len(load_tokenizer(args.dir).tokens)} tokens ({args.type})")
        return 0
    tokenizer = load_tokenizer(args.dir)
    if len(args.inputs) > 1:
        raise KdstError(f"{args.action} reads one file (or stdin), not {len(args.inputs)}")
    name = args.inputs[0] if args.inputs else "<stdin>"
    lines = read_utf8_lines(args.inputs[0]) if args.inputs else \
        [decode_line(raw, name, number) for number, raw in enumerate(sys.stdin.buffer, start=1)]
    outputs = []  # printed only once every line is done: a bad line leaves no partial output
    for number, line in enumerate(lines, start=1):
        key, _, value = line.partition(" ") if args.keyed else ("", "", line)
        if args.action == "encode":
            out = " ".join(str(i) for i in tokenizer.encode(value))
        else:
            out = tokenizer.decode(token_ids(value, len(tokenizer.tokens), name, number))
        outputs.append(f"{key} {out}" if args.keyed else out)
    print("".join(f"{out}\n" for out in outputs), end="")
    return 0


def token_ids(text: str, vocab_size: int, source: str, line: int) -> list[int]:
    """The ids of one line of ``kdst tokenizer decode`` input, each an id of the vocabulary."""
    ids = []
    for word in text.split():
        try:
            ids.append(int(word))
        except ValueError:
            raise DataError(source, f"'{word}' is not a token id (an integer)", line) from None
        if not 0 <= ids[-1] < vocab_size:
            raise DataError(source, f"token id {ids[-1]} is out of range (the vocabulary has ids 0 to "
                                    f"{vocab_size - 1})", line)
    return ids


def read_symbols(path: Path) -> list[str]:
    if not path.is_file():
        raise KdstError(f"{path}: user symbol list not found")
    return path.read_text(encoding="utf-8").split()


def add_prep_mustc_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus_dir", type=Path, help="the en-<tgt> directory or its parent")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tgt-lang", default="de")
    p.add_argument("--splits", help="comma-separated (default: all present)")
    p.add_argument("--task", choices=("st", "asr"), default="st",
                   help="what text holds: the translation (st) or the normalised English transcript (asr)")


def run_prep_mustc(args: argparse.Namespace) -> int:
    from kdst.data.corpora.mustc import prepare_mustc

    splits = tuple(args.splits.split(",")) if args.splits else None
    prepare_mustc(args.corpus_dir, args.out_dir, tgt_lang=args.tgt_lang, splits=splits, task=args.task)
    return 0


def add_make_mini_text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--variability", type=float, default=0.3, help="share of human variation in references")
    p.add_argument("--exclude", nargs="*", default=[], help="files of English sentences to leave out (held-out sets)")


def run_make_mini_text(args: argparse.Namespace) -> int:
    from kdst.synth.mt import make_text_corpus

    if make_text_corpus(args.out_dir, args.num, seed=args.seed, variability=args.variability,
                        exclude_files=args.exclude):
        print(f"{args.out_dir}: {args.num} sentence pairs")
    else:
        print(f"{args.out_dir}: complete already")
    return 0


def add_combine_text_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path)
    p.add_argument("sources", type=Path, nargs="+")
    p.add_argument("--files", default="text.en,text", help="comma-separated text files to combine")


def run_combine_text(args: argparse.Namespace) -> int:
    from kdst.data.kaldi_dir import combine_text_dirs

    n = combine_text_dirs(args.out_dir, args.sources, args.files.split(","))
    print(f"{args.out_dir}: {n} utterances from {len(args.sources)} data dirs")
    return 0


def add_make_mini_corpus_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-dev", type=int, default=100)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--utts-per-talk", type=int, default=20)
    p.add_argument("--variability", type=float, default=0.3, help="share of human variation in references")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nj", type=int, default=2)


def run_make_mini_corpus(args: argparse.Namespace) -> int:
    from kdst.synth.speech import make_corpus

    sizes = {"train": args.num_train, "dev": args.num_dev, "tst-COMMON": args.num_test}
    make_corpus(args.out_dir, sizes=sizes, seed=args.seed, utts_per_talk=args.utts_per_talk,  # logs its stats
                nj=args.nj, variability=args.variability)
    return 0


# --- training -------------------------------------------------------------------------------

def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --exp-dir where it stopped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=20 (repeatable)")


def run_train(args: argparse.Namespace) -> int:
    from kdst.config import load_config
    from kdst.train.trainer import TrainingStopped, run

    try:
        run(load_config(args.config, args.set), args.exp_dir, resume=args.resume)
    except TrainingStopped as e:  # not finished: the stage must not go on as if it were
        if os.environ.get("RANK", "0") == "0":  # one message, not one per DDP process
            print(f"kdst train: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def add_average_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--num", type=int, default=5, help="epoch checkpoints to average")
    p.add_argument("--by", choices=("best", "last"), default="best", help="best: lowest validation loss")


def run_average(args: argparse.Namespace) -> int:
    from kdst.train.checkpoint import average

    out = average(args.exp_dir, args.num, by=args.by)
    print(f"{out}: average of the {args.num} {args.by} epoch checkpoints")
    return 0


# --- the table ------------------------------------------------------------------------------

def commands() -> list[Command]:
    """Every subcommand, in the order ``kdst -h`` lists them."""
    from kdst import launch, metrics
    from kdst.data.corpora import librispeech, wsj
    from kdst.launch.split import JOB_SUBCOMMAND
    from kdst.report import compression, results, systems
    from kdst.report import rnnt as rnnt_report
    from kdst.report import study
    from kdst.teacher import nbest_union, pseudo_labels, rescore

    return [
        Command("validate-data", "check Kaldi data dirs; one line per problem",
                add_validate_data_arguments, run_validate_data),
        Command("fix-data", "keep the consistent utterances of data dirs (originals in .backup/)",
                add_fix_data_arguments, run_fix_data),
        Command("launch", "run JOB=1:N LOG CMD ... (Kaldi run.pl semantics)", launch.add_arguments, launch.run),
        Command("fbank", "80-dim Kaldi fbank into ark/scp shards; feats.scp + utt2num_frames",
                add_fbank_arguments, run_fbank),
        Command("decode", "beam search over a data dir: hyp.txt, nbest.txt, decode_stats.json",
                add_decode_arguments, run_decode),
        Command("topk", "teacher top-k (or sampled) cache of a data dir for word-level KD",
                add_topk_arguments, run_topk),
        Command("espnet-tokenizer", "an ESPnet model's token list + BPE model as a kdst tokenizer dir",
                add_espnet_tokenizer_arguments, run_espnet_tokenizer),
        Command("hf-tokenizer", "a Hugging Face model's tokenizer as a kdst tokenizer dir (hf:PATH)",
                add_hf_tokenizer_arguments, run_hf_tokenizer),
        Command("hf-features", "a Whisper teacher's log-mel features of a data dir's audio into a copy of it",
                add_hf_features_arguments, run_hf_features),
        Command("compute-cmvn", "global CMVN statistics (Kaldi matrix) of a feats.scp",
                add_compute_cmvn_arguments, run_compute_cmvn),
        Command("speed-perturb", "Kaldi-style speed-perturbed copy of a data dir (sox pipes)",
                add_speed_perturb_arguments, run_speed_perturb),
        Command("tokenizer", "train a tokenizer, or encode / decode with one", add_tokenizer_arguments, run_tokenizer),
        Command("train", "train a model from a YAML config (torchrun for several GPUs)",
                add_train_arguments, run_train),
        Command("average", "average the weights of the best or last epoch checkpoints",
                add_average_arguments, run_average),
        Command("score", "BLEU/chrF/TER (sacrebleu) and WER/CER of hypotheses against references",
                metrics.add_arguments, metrics.run),
        Command("results", "score decoded systems into exp/results.json and RESULTS.md",
                results.add_arguments, results.run),
        Command("compression", "compression report: students against their teacher (size, speed, WER) "
                               "into exp/results.json and RESULTS.md", compression.add_arguments, compression.run),
        Command("rnnt-report", "the RNN-T recipe's KD modes x student architectures matrix into RESULTS.md "
                               "and exp/rnnt_matrix.json", rnnt_report.add_arguments, rnnt_report.run),
        Command("study-report", "a study's document: its table over seeds, a chart and the published findings it "
                                "tests (docs/results/)", study.add_arguments, study.run),
        Command("systems", "exp/systems.json: register a trained system (add), or list them",
                systems.add_arguments, systems.run),
        Command("rescore", "one distillation target per utterance from a teacher n-best (Seq-KD, Seq-Inter, MBR)",
                rescore.add_arguments, rescore.run),
        Command("pseudo-labels", "1-best and weighted N-best pseudo-label sets from a teacher n-best",
                pseudo_labels.add_arguments, pseudo_labels.run),
        Command("nbest-union", "one n-best list from several teachers' n-best lists (the mixture of their posteriors)",
                nbest_union.add_arguments, nbest_union.run),
        Command("prep-mustc", "MuST-C layout -> Kaldi data dirs", add_prep_mustc_arguments, run_prep_mustc),
        Command("prep-wsj", "WSJ0/WSJ1 LDC discs -> Kaldi data dirs (train_si284, test_dev93, ...)",
                wsj.add_arguments, wsj.run),
        Command("prep-librispeech", "LibriSpeech (and an unlabelled pool) -> Kaldi data dirs",
                librispeech.add_arguments, librispeech.run),
        Command("make-mini-text", "extra En-De parallel text for the mini MT teacher (a data dir)",
                add_make_mini_text_arguments, run_make_mini_text),
        Command("combine-text", "a text-only data dir from the text files of several data dirs",
                add_combine_text_arguments, run_combine_text),
        Command("make-mini-corpus", "synthesise the mini En-De corpus in MuST-C layout",
                add_make_mini_corpus_arguments, run_make_mini_corpus),
        Command(JOB_SUBCOMMAND, None, add_split_job_arguments, run_split_job),
    ]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none worth saying or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not action.option_strings or not has_default(action) or "default" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def has_default(action: argparse.Action) -> bool:
    """Whether the help should name the default: not for nothing (None, an empty list) or a flag's False."""
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (str, list, tuple)) and not default))


def package_version() -> str:
    """The installed distribution's version; the source tree's when kdst runs uninstalled."""
    try:
        return importlib.metadata.version("kdst")
    except importlib.metadata.PackageNotFoundError:
        from kdst import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdst", description=__doc__.split("\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands():
        p = sub.add_parser(command.name, **({"help": command.help} if command.help else {}))
        command.add_arguments(p)
        p.set_defaults(run_command=command.run)
    for p in all_parsers(parser):  # the subcommands' own subcommands (kdst systems add) too
        p.formatter_class = DefaultsHelpFormatter
        for action in p._actions:  # argparse prints no help line at all for an option without help
            if action.help is None and action.option_strings and has_default(action):
                action.help = "(default: %(default)s)"
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every parser below it, through its subcommands."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases name one parser twice
                found += all_parsers(child)
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.run_command(args)
    except KdstError as e:
        print(f"kdst {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kdst {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
