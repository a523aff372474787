"""``kdst results``: score decoded systems and collect them into exp/results.json and RESULTS.md.

A system is an experiment directory ``exp/<system>/`` holding one
``decode_<set>/`` per evaluation set (hyp.txt, decode_stats.json).  Each is scored
against ``data/<set>/<text>`` and the scores are written beside the hypotheses
(``score.json``), then gathered into one table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdst import metrics
from kdst.data.files import atomic_write_text
from kdst.errors import KdstError


def score_system(decode_dir: Path, reference: Path, metric_names: list[str]) -> dict:
    result = metrics.score(reference, decode_dir / "hyp.txt", metric_names)
    atomic_write_text(decode_dir / "score.json", json.dumps(result, indent=1) + "\n")
    return result


def collect(exp_root: Path, data_root: Path, systems: list[str], sets: list[str], *, text: str = "text",
            metric_names: list[str] = ("bleu", "chrf", "ter")) -> dict:
    """Score every (system, set) pair; keys are the system name, or ``system/set`` with several sets."""
    results: dict[str, dict] = {}
    signatures: dict[str, str] = {}
    for system in systems:
        for test_set in sets:
            decode_dir = exp_root / system / f"decode_{test_set}"
            if not (decode_dir / "hyp.txt").is_file():
                raise KdstError(f"{decode_dir}/hyp.txt: missing (run the decoding stage first)")
            score = score_system(decode_dir, data_root / test_set / text, list(metric_names))
            stats = json.loads((decode_dir / "decode_stats.json").read_text())
            signatures.update(score["signature"])
            entry = {m: score[m] for m in metric_names}
            entry.update(n=score["n"], params=stats["params"], sentences_per_s=stats["sentences_per_s"])
            if "rtf" in stats:
                entry["rtf"] = stats["rtf"]
            results[system if len(sets) == 1 else f"{system}/{test_set}"] = entry
    table = {"systems": results, "signatures": signatures, "sets": list(sets)}
    atomic_write_text(exp_root / "results.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(exp_root / "RESULTS.md", markdown(table))
    return results


def markdown(table: dict) -> str:
    results = table["systems"]
    metric_names = [m for m in metrics.METRICS if any(m in r for r in results.values())]
    header = ["system", *(metrics.LABELS[m] for m in metric_names), "params", "sentences/s", "RTF"]
    lines = [f"# Results ({', '.join(table['sets'])})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        cells = [name, *(f"{r[m]:.2f}" for m in metric_names), f"{r['params'] / 1e6:.2f}M",
                 f"{r['sentences_per_s']:.1f}", f"{r['rtf']:.3f}" if "rtf" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "sacrebleu signatures:", ""]
    lines += [f"- {metrics.LABELS[m]}: `{sig}`" for m, sig in table["signatures"].items()]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp-dir", type=Path, default=Path("exp"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--systems", required=True, help="space-separated experiment names under --exp-dir")
    parser.add_argument("--sets", required=True, help="space-separated evaluation sets")
    parser.add_argument("--text", default="text", help="reference file of each set's data dir")
    parser.add_argument("--metrics", default="bleu,chrf,ter")


def run(args: argparse.Namespace) -> int:
    collect(args.exp_dir, args.data_dir, args.systems.split(), args.sets.split(), text=args.text,
            metric_names=metrics.parse_metrics(args.metrics))
    print((args.exp_dir / "RESULTS.md").read_text(), end="")
    return 0
