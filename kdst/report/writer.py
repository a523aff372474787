"""What every report writes, and how: score.json, exp/results.json, RESULTS.md, PNG charts.

Every file is written under a temporary name and renamed, so that a report killed half
way leaves the previous file, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdst import metrics
from kdst.data.files import atomic_path, atomic_write_text
from kdst.errors import DataError

RESULTS_JSON = "results.json"
RESULTS_MD = "RESULTS.md"


def score_decode_dir(decode_dir: Path, reference: Path, metric_names: list[str]) -> dict:
    """Score ``decode_dir/hyp.txt`` against ``reference``; the scores also go to ``decode_dir/score.json``."""
    return score_utterances(decode_dir, reference, metric_names)[0]


def score_utterances(decode_dir: Path, reference: Path, metric_names: list[str], *,
                     write: bool = True) -> tuple[dict, dict]:
    """(scores, per-utterance statistics) of ``decode_dir/hyp.txt`` against ``reference``
    (``metrics.score_pairs``); the scores also go to ``decode_dir/score.json`` if ``write``."""
    hyp = decode_dir / "hyp.txt"
    ids, refs, hyps = metrics.read_pairs(reference, hyp)
    if not ids:
        raise DataError(reference, "no utterances to score")
    result, stats = metrics.score_pairs(refs, hyps, metric_names)
    if write:
        write_json(decode_dir / "score.json", result)
    return result, stats


def merge_results_json(exp_root: Path, entries: dict[str, dict], systems: list[str]) -> dict:
    """Put ``entries`` into exp/results.json in place of what it held for ``systems``; returns the file's content.

    A key is a system or ``system/set``: the entries of a system scored earlier on other sets
    go too, so that a system never has keys of two scorings.  Other systems' entries stay (a
    teacher scored on its own stage is in the file the students' scoring writes).
    """
    path = Path(exp_root) / RESULTS_JSON
    old = json.loads(path.read_text()) if path.is_file() else {}
    mine = set(systems)
    kept = {k: v for k, v in old.items() if k not in mine and k.rpartition("/")[0] not in mine}
    merged = {**kept, **entries}
    write_json(path, merged)
    return merged


def write_json(path: Path, content) -> None:
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, one line each."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def chart_link(chart: str, title: str | None = None) -> str:
    """The markdown image of a chart beside RESULTS.md; the title defaults to its file name in words."""
    return f"![{title or Path(chart).stem.replace('_', ' ')}]({chart})"


def write_markdown(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace the part of ``path`` between the markers ``begin`` and ``end`` (``section`` holds them),
    or append it: what another report wrote above stays."""
    text = path.read_text() if path.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    atomic_write_text(path, text)


def figure(panels: int, width: float):
    """A matplotlib Figure on an Agg canvas and its axes, one panel under the other: no pyplot, so no
    global backend switch and no figure kept alive by pyplot's registry (reports run inside other
    programs' processes too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 3.6 * panels), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(panels, 1, i + 1) for i in range(panels)]


def save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:  # the temporary name ends in .tmp, hence format=
        fig.savefig(tmp, format="png", dpi=100)
