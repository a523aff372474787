"""``kdst <subcommand>``: thin argument parsing over the modules below.

Every user-fixable problem (a KdstError) is printed as one line and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kdst.errors import KdstError


def cmd_validate_data(args: argparse.Namespace) -> int:
    from kdst.data.validate import validate_data_dir

    status = 0
    for directory in args.dirs:
        problems = validate_data_dir(directory, check_audio=not args.no_audio)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
            status = 1
        else:
            print(f"{directory}: OK")
    return status


def cmd_fix_data(args: argparse.Namespace) -> int:
    from kdst.data.validate import fix_data_dir

    for directory in args.dirs:
        report = fix_data_dir(directory, check_audio=args.check_audio)
        print(f"{directory}: {report} (originals in {Path(directory) / '.backup'})")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from kdst import launch

    return launch.run(args)


def cmd_fbank(args: argparse.Namespace) -> int:
    from kdst.data.features import FbankOptions, write_fbank_shard
    from kdst.data.kaldi_dir import merge_into_data_dir

    options = FbankOptions.from_yaml(args.config)
    name = args.name or f"raw_fbank_{Path(args.data_dir).name}"
    nj = _jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        scp = write_fbank_shard(args.data_dir, args.feat_dir, name, options)
        if args.name is None:  # a whole data dir, not a job of a split one
            merge_into_data_dir(args.data_dir, [scp])
        return 0
    job_args = ["fbank", "--nj", "1", "--name", f"{name}.JOB"]
    if args.config:
        job_args += ["--config", str(args.config.resolve())]
    status = _run_split_jobs(args.data_dir, nj, args.cmd, Path(args.feat_dir) / "log" / f"{name}.JOB.log",
                             job_args, [str(args.feat_dir.resolve())])
    if status == 0:
        merge_into_data_dir(args.data_dir, [Path(args.feat_dir) / f"{name}.{j}.scp" for j in range(1, nj + 1)])
    return status


def _jobs_for(data_dir: Path, nj: int) -> int:
    """A job reads whole recordings, so there can be no more jobs than recordings."""
    from kdst.data.kaldi_dir import DataDir

    return min(nj, len(set(DataDir(data_dir).recording_of().values())))


def _run_split_jobs(data_dir: Path, nj: int, cmd: str | None, log: Path, kdst_args: list[str],
                    after_part: list[str]) -> int:
    """Split ``data_dir`` into ``nj`` parts and run ``kdst <kdst_args> <part> <after_part>`` on each.

    The jobs go through the launcher command of cmd.sh (``--cmd``), by default
    ``kdst launch`` on this machine.
    """
    from kdst.data.kaldi_dir import split_data_dir

    parts = split_data_dir(data_dir, nj).resolve()
    argv = [f"JOB=1:{nj}", str(log), sys.executable, "-m", "kdst.cli", *kdst_args, str(parts / "JOB"), *after_part]
    launcher = shlex.split(cmd) if cmd else [sys.executable, "-m", "kdst.launch"]
    env = dict(os.environ)
    on_this_machine = cmd is None or (launcher[:2] == ["kdst", "launch"] and "--backend" not in launcher)
    if on_this_machine and "OMP_NUM_THREADS" not in env:
        # The jobs share this machine's cores; torch would give each of them all the cores.
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // nj))
    return subprocess.call([*launcher, *argv], env=env)


def cmd_decode(args: argparse.Namespace) -> int:
    from kdst.decode.decode import decode_data_dir, merge_job_outputs
    from kdst.decode.search import SearchOptions

    if (args.checkpoint is None) == (args.teacher_espnet is None):
        raise KdstError("decode needs one model: --checkpoint or --teacher-espnet")
    options = SearchOptions(beam=args.beam, nbest=args.nbest, max_len_ratio=args.max_len_ratio,
                            max_len_bias=args.max_len_bias, min_len_ratio=args.min_len_ratio,
                            length_penalty=args.length_penalty, espnet_rule=args.espnet_rule)
    nj = _jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        decode_data_dir(args.checkpoint, args.data_dir, args.output_dir, options, greedy=args.greedy,
                        batch_units=args.batch_units, device=args.device,
                        max_symbols_per_frame=args.max_symbols_per_frame, teacher_espnet=args.teacher_espnet,
                        src_text=args.src_text)
        return 0
    start = time.perf_counter()
    model_args = (["--checkpoint", str(args.checkpoint.resolve())] if args.checkpoint else
                  ["--teacher-espnet", str(args.teacher_espnet.resolve()), "--src-text", args.src_text])
    job_args = ["decode", "--nj", "1", *model_args, "--beam", str(args.beam),
                "--nbest", str(args.nbest), "--max-len-ratio", str(args.max_len_ratio),
                "--max-len-bias", str(args.max_len_bias), "--min-len-ratio", str(args.min_len_ratio),
                "--length-penalty", str(args.length_penalty), "--batch-units", str(args.batch_units),
                "--max-symbols-per-frame", str(args.max_symbols_per_frame),
                *(["--greedy"] if args.greedy else []), *(["--device", args.device] if args.device else []),
                *(["--espnet-rule"] if args.espnet_rule else []), "--data-dir"]
    jobs_dir = args.output_dir.resolve() / f"split{nj}"
    status = _run_split_jobs(args.data_dir, nj, args.cmd, args.output_dir / "log" / "decode.JOB.log", job_args,
                             ["--output-dir", str(jobs_dir / "JOB")])
    if status == 0:
        merge_job_outputs([jobs_dir / str(j) for j in range(1, nj + 1)], args.output_dir,
                          time.perf_counter() - start)
    return status


def cmd_topk(args: argparse.Namespace) -> int:
    from kdst.data.teacher_cache import TeacherCache, merge_caches
    from kdst.teacher.topk import write_cache

    if (args.teacher is None) == (args.teacher_espnet is None):
        raise KdstError("topk needs one teacher: --teacher or --teacher-espnet")
    options = dict(k=args.k, mode=args.mode, text=args.text, batch_units=args.batch_units, device=args.device,
                   seed=args.seed, teacher_espnet=args.teacher_espnet, src_text=args.src_text)
    nj = _jobs_for(args.data_dir, args.nj)
    if nj <= 1:
        write_cache(args.teacher, args.data_dir, args.out, **options)
    else:
        teacher_args = (["--teacher", str(args.teacher.resolve())] if args.teacher else
                        ["--teacher-espnet", str(args.teacher_espnet.resolve()), "--src-text", args.src_text])
        job_args = ["topk", "--nj", "1", *teacher_args, "--k", str(args.k), "--mode",
                    args.mode, "--batch-units", str(args.batch_units), "--seed", str(args.seed),
                    *(["--text", args.text] if args.text else []), *(["--device", args.device] if args.device else []),
                    "--data-dir"]
        jobs_dir = args.out.resolve().parent / f"{args.out.name}.split{nj}"
        status = _run_split_jobs(args.data_dir, nj, args.cmd, args.out.parent / "log" / f"{args.out.name}.JOB.log",
                                 job_args, ["--out", str(jobs_dir / "JOB")])
        if status != 0:
            return status
        merge_caches([jobs_dir / str(j) for j in range(1, nj + 1)], args.out)
        shutil.rmtree(jobs_dir)
    cache = TeacherCache(args.out)
    print(f"{args.out}: {len(cache)} utterances, k={cache.k} ({cache.mode}), {cache.bytes_per_token():.1f} bytes "
          f"per target token")
    return 0


def cmd_espnet_tokenizer(args: argparse.Namespace) -> int:
    from kdst.models.espnet_bridge import export_tokenizer, resolve

    out = export_tokenizer(resolve(args.teacher_espnet), args.out, args.side)
    print(f"{out}: the {args.side} token list and BPE model of {args.teacher_espnet} as a kdst tokenizer")
    return 0


def cmd_compute_cmvn(args: argparse.Namespace) -> int:
    from kdst.data.features import compute_global_cmvn

    stats = compute_global_cmvn(args.feats_scp, args.out)
    print(f"{args.out}: global CMVN over {int(stats[0, -1])} frames")
    return 0


def cmd_speed_perturb(args: argparse.Namespace) -> int:
    from kdst.data.features import speed_perturb_data_dir

    factors = [float(f) for f in args.factors.split(",")]
    speed_perturb_data_dir(args.src, args.dst, factors)
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from kdst.data.tokenizer import load_tokenizer, train_tokenizer

    if args.action == "train":
        train_tokenizer(args.dir, args.inputs, type=args.type, vocab_size=args.vocab_size,
                        character_coverage=args.character_coverage, kaldi_text=not args.plain_text,
                        user_symbols=_read_symbols(args.user_symbols) if args.user_symbols else ())
        print(f"{args.dir}: {len(load_tokenizer(args.dir).tokens)} tokens ({args.type})")
        return 0
    tokenizer = load_tokenizer(args.dir)
    source = open(args.inputs[0], encoding="utf-8") if args.inputs else sys.stdin
    for line in source:
        key, _, value = line.rstrip("\n").partition(" ") if args.keyed else ("", "", line.rstrip("\n"))
        if args.action == "encode":
            out = " ".join(str(i) for i in tokenizer.encode(value))
        else:
            out = tokenizer.decode(int(i) for i in value.split())
        print(f"{key} {out}" if args.keyed else out)
    return 0


def _read_symbols(path: Path) -> list[str]:
    if not path.is_file():
        raise KdstError(f"{path}: user symbol list not found")
    return path.read_text(encoding="utf-8").split()


def cmd_prep_mustc(args: argparse.Namespace) -> int:
    from kdst.data.corpora.mustc import prepare_mustc

    splits = tuple(args.splits.split(",")) if args.splits else None
    prepare_mustc(args.corpus_dir, args.out_dir, tgt_lang=args.tgt_lang, splits=splits, task=args.task)
    return 0


def cmd_make_mini_text(args: argparse.Namespace) -> int:
    from kdst.synth.mt import make_text_corpus

    if make_text_corpus(args.out_dir, args.num, seed=args.seed, variability=args.variability,
                        exclude_files=args.exclude):
        print(f"{args.out_dir}: {args.num} sentence pairs")
    else:
        print(f"{args.out_dir}: complete already")
    return 0


def cmd_combine_text(args: argparse.Namespace) -> int:
    from kdst.data.kaldi_dir import combine_text_dirs

    n = combine_text_dirs(args.out_dir, args.sources, args.files.split(","))
    print(f"{args.out_dir}: {n} utterances from {len(args.sources)} data dirs")
    return 0


def cmd_make_mini_corpus(args: argparse.Namespace) -> int:
    from kdst.synth.speech import make_corpus

    sizes = {"train": args.num_train, "dev": args.num_dev, "tst-COMMON": args.num_test}
    make_corpus(args.out_dir, sizes=sizes, seed=args.seed, utts_per_talk=args.utts_per_talk,  # logs its stats
                nj=args.nj, variability=args.variability)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kdst.train.trainer import TrainingStopped, load_config, run

    try:
        run(load_config(args.config, args.set), args.exp_dir, resume=args.resume)
    except TrainingStopped as e:  # not finished: the stage must not go on as if it were
        if os.environ.get("RANK", "0") == "0":  # one message, not one per DDP process
            print(f"kdst train: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from kdst.train.checkpoint import average

    out = average(args.exp_dir, args.num, by=args.by)
    print(f"{out}: average of the {args.num} {args.by} epoch checkpoints")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from kdst import metrics

    return metrics.run(args)


def cmd_results(args: argparse.Namespace) -> int:
    from kdst.report import results

    return results.run(args)


def cmd_rescore(args: argparse.Namespace) -> int:
    from kdst.teacher import rescore

    return rescore.run(args)


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from kdst.teacher import pseudo_labels

    return pseudo_labels.run(args)


def cmd_compression(args: argparse.Namespace) -> int:
    from kdst.report import compression

    return compression.run(args)


def cmd_prep_wsj(args: argparse.Namespace) -> int:
    from kdst.data.corpora import wsj

    return wsj.run(args)


def cmd_prep_librispeech(args: argparse.Namespace) -> int:
    from kdst.data.corpora import librispeech

    return librispeech.run(args)


def cmd_rnnt_report(args: argparse.Namespace) -> int:
    from kdst.report import rnnt as rnnt_report

    return rnnt_report.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdst", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate-data", help="check Kaldi data dirs; one line per problem")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--no-audio", action="store_true", help="do not open the audio (faster)")
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("fix-data", help="keep the consistent utterances of data dirs (originals in .backup/)")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--check-audio", action="store_true", help="also drop utterances whose audio is unreadable")
    p.set_defaults(func=cmd_fix_data)

    from kdst import launch

    p = sub.add_parser("launch", help="run JOB=1:N LOG CMD ... (Kaldi run.pl semantics)")
    launch.add_arguments(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("fbank", help="80-dim Kaldi fbank into ark/scp shards; feats.scp + utt2num_frames")
    p.add_argument("data_dir", type=Path)
    p.add_argument("feat_dir", type=Path, help="where the ark/scp shards and logs go")
    p.add_argument("--config", type=Path, help="YAML of fbank options (conf/fbank.yaml)")
    p.add_argument("--nj", type=int, default=1, help="parallel jobs")
    p.add_argument("--cmd", help="launcher for the jobs, as in cmd.sh (default: kdst launch, in-process)")
    p.add_argument("--name", help=argparse.SUPPRESS)  # set for the jobs of a split data dir
    p.set_defaults(func=cmd_fbank)

    p = sub.add_parser("decode", help="beam search over a data dir: hyp.txt, nbest.txt, decode_stats.json")
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--teacher-espnet", type=Path, help="an ESPnet2 exp dir or packed zip instead of --checkpoint")
    p.add_argument("--src-text", default="text.en", help="--teacher-espnet MT: the source text file of the data dir")
    p.add_argument("--espnet-rule", action="store_true",
                   help="ESPnet BeamSearch's pruning and length rules (kdst.decode.search)")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--nbest", type=int, default=1)
    p.add_argument("--greedy", action="store_true", help="greedy search instead of beam search")
    p.add_argument("--length-penalty", type=float, default=1.0, help="score = logprob / length**this")
    p.add_argument("--max-len-ratio", type=float, default=1.0, help="of the encoder output length")
    p.add_argument("--max-len-bias", type=int, default=5)
    p.add_argument("--min-len-ratio", type=float, default=0.0)
    p.add_argument("--max-symbols-per-frame", type=int, default=3,
                   help="transducer greedy search (--greedy or --beam 1): most labels emitted on one frame")
    p.add_argument("--batch-units", type=int, default=20000, help="padded frames (or tokens) per batch")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--nj", type=int, default=1, help="parallel jobs")
    p.add_argument("--cmd", help="launcher for the jobs, as in cmd.sh (default: kdst launch, in-process)")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("topk", help="teacher top-k (or sampled) cache of a data dir for word-level KD")
    p.add_argument("--teacher", type=Path, help="MT teacher checkpoint")
    p.add_argument("--teacher-espnet", type=Path, help="an ESPnet2 MT exp dir or packed zip instead of --teacher")
    p.add_argument("--src-text", default="text.en", help="--teacher-espnet: the source text file of the data dir")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="cache directory to write")
    p.add_argument("--k", type=int, default=8, help="entries (topk) or draws (sampled) per target token")
    p.add_argument("--mode", choices=("topk", "sampled"), default="topk")
    p.add_argument("--text", help="target text file of the data dir (default: the teacher's, e.g. text.de)")
    p.add_argument("--seed", type=int, default=1, help="for --mode sampled")
    p.add_argument("--batch-units", type=int, default=20000, help="padded tokens per batch")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--nj", type=int, default=1, help="parallel jobs")
    p.add_argument("--cmd", help="launcher for the jobs, as in cmd.sh (default: kdst launch, in-process)")
    p.set_defaults(func=cmd_topk)

    p = sub.add_parser("espnet-tokenizer", help="an ESPnet model's token list + BPE model as a kdst tokenizer dir")
    p.add_argument("--teacher-espnet", type=Path, required=True, help="ESPnet2 exp dir, packed zip or config.yaml")
    p.add_argument("--out", type=Path, required=True, help="kdst tokenizer directory to write")
    p.add_argument("--side", choices=("tgt", "src"), default="tgt", help="target or (MT) source vocabulary")
    p.set_defaults(func=cmd_espnet_tokenizer)

    p = sub.add_parser("compute-cmvn", help="global CMVN statistics (Kaldi matrix) of a feats.scp")
    p.add_argument("feats_scp", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_compute_cmvn)

    p = sub.add_parser("speed-perturb", help="Kaldi-style speed-perturbed copy of a data dir (sox pipes)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--factors", default="0.9,1.0,1.1")
    p.set_defaults(func=cmd_speed_perturb)

    p = sub.add_parser("tokenizer", help="train a tokenizer, or encode / decode with one")
    p.add_argument("action", choices=("train", "encode", "decode"))
    p.add_argument("dir", type=Path, help="tokenizer directory")
    p.add_argument("inputs", nargs="*", help="train: Kaldi text files; encode/decode: a file (default stdin)")
    p.add_argument("--type", default="bpe", choices=("bpe", "unigram", "char"))
    p.add_argument("--vocab-size", type=int, default=1000)
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--plain-text", action="store_true", help="train inputs are plain lines, not Kaldi text")
    p.add_argument("--user-symbols", type=Path, help="file of symbols kept whole, e.g. WSJ's <NOISE> (nlsyms)")
    p.add_argument("--keyed", action="store_true", help="encode/decode lines are 'key text' (Kaldi text)")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("train", help="train a model from a YAML config (torchrun for several GPUs)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --exp-dir where it stopped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=20 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("average", help="average the weights of the best or last epoch checkpoints")
    p.add_argument("--exp-dir", type=Path, required=True)
    p.add_argument("--num", type=int, default=5)
    p.add_argument("--by", choices=("best", "last"), default="best", help="best: lowest validation loss")
    p.set_defaults(func=cmd_average)

    from kdst import metrics

    p = sub.add_parser("score", help="BLEU/chrF/TER (sacrebleu) and WER/CER of hypotheses against references")
    metrics.add_arguments(p)
    p.set_defaults(func=cmd_score)

    from kdst.report import results

    p = sub.add_parser("results", help="score decoded systems into exp/results.json and RESULTS.md")
    results.add_arguments(p)
    p.set_defaults(func=cmd_results)

    from kdst.report import compression

    p = sub.add_parser("compression", help="compression report: students against their teacher "
                                           "(size, speed, WER) into exp/results.json and RESULTS.md")
    compression.add_arguments(p)
    p.set_defaults(func=cmd_compression)

    from kdst.report import rnnt as rnnt_report

    p = sub.add_parser("rnnt-report", help="the RNN-T recipe's KD modes x student architectures matrix "
                                           "into RESULTS.md and exp/rnnt_matrix.json")
    rnnt_report.add_arguments(p)
    p.set_defaults(func=cmd_rnnt_report)

    from kdst.teacher import rescore

    p = sub.add_parser("rescore", help="one distillation target per utterance from a teacher n-best (Seq-KD)")
    rescore.add_arguments(p)
    p.set_defaults(func=cmd_rescore)

    from kdst.teacher import pseudo_labels

    p = sub.add_parser("pseudo-labels", help="1-best and weighted N-best pseudo-label sets from a teacher n-best")
    pseudo_labels.add_arguments(p)
    p.set_defaults(func=cmd_pseudo_labels)

    p = sub.add_parser("prep-mustc", help="MuST-C layout -> Kaldi data dirs")
    p.add_argument("corpus_dir", type=Path, help="the en-<tgt> directory or its parent")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tgt-lang", default="de")
    p.add_argument("--splits", help="comma-separated (default: all present)")
    p.add_argument("--task", choices=("st", "asr"), default="st",
                   help="what text holds: the translation (st) or the normalised English transcript (asr)")
    p.set_defaults(func=cmd_prep_mustc)

    from kdst.data.corpora import wsj

    p = sub.add_parser("prep-wsj", help="WSJ0/WSJ1 LDC discs -> Kaldi data dirs (train_si284, test_dev93, ...)")
    wsj.add_arguments(p)
    p.set_defaults(func=cmd_prep_wsj)

    from kdst.data.corpora import librispeech

    p = sub.add_parser("prep-librispeech", help="LibriSpeech (and an unlabelled pool) -> Kaldi data dirs")
    librispeech.add_arguments(p)
    p.set_defaults(func=cmd_prep_librispeech)

    p = sub.add_parser("make-mini-text", help="extra En-De parallel text for the mini MT teacher (a data dir)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--variability", type=float, default=0.3, help="share of human variation in references")
    p.add_argument("--exclude", nargs="*", default=[], help="files of English sentences to leave out (held-out sets)")
    p.set_defaults(func=cmd_make_mini_text)

    p = sub.add_parser("combine-text", help="a text-only data dir from the text files of several data dirs")
    p.add_argument("out_dir", type=Path)
    p.add_argument("sources", type=Path, nargs="+")
    p.add_argument("--files", default="text.en,text", help="comma-separated text files to combine")
    p.set_defaults(func=cmd_combine_text)

    p = sub.add_parser("make-mini-corpus", help="synthesise the mini En-De corpus in MuST-C layout")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-train", type=int, default=2000)
    p.add_argument("--num-dev", type=int, default=100)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--utts-per-talk", type=int, default=20)
    p.add_argument("--variability", type=float, default=0.3, help="share of human variation in references")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nj", type=int, default=2)
    p.set_defaults(func=cmd_make_mini_corpus)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except KdstError as e:
        print(f"kdst {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kdst {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
