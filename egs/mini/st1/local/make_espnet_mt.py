#!/usr/bin/env python3
"""A small ESPnet2 MT model trained on the mini corpus, in ESPnet's layout, to try
``--teacher-espnet`` (run.sh --teacher-espnet exp_espnet/exp/mt_train) without an ESPnet recipe.

    local/make_espnet_mt.py [--out exp_espnet] [--steps 600]

It is built and trained with ESPnet's own code (MTTask.build_model, the model's own loss; a
plain Adam loop in place of ESPnet's trainer), with BPE models and token lists made the
way ESPnet's recipes make them (test/espnet_models.py).  Needs the ``kdst[espnet]`` extra.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "test"))
from espnet_models import build_mt, train_mt  # noqa: E402


def read_text(path: Path) -> dict[str, str]:
    return dict(line.rstrip("\n").split(" ", 1) for line in path.read_text(encoding="utf-8").splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/mt_train"), help="text.en + text (German)")
    parser.add_argument("--out", type=Path, default=Path("exp_espnet"), help="a recipe-like dir: exp/mt_train")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--vocab", type=int, default=300)
    args = parser.parse_args()
    src, tgt = read_text(args.data / "text.en"), read_text(args.data / "text")
    utts = sorted(set(src) & set(tgt))
    pairs = [(src[u], tgt[u]) for u in utts]
    exp, model = build_mt(args.out, [s for s, _ in pairs], [t for _, t in pairs], d=128, heads=4, ff=512,
                          layers=2, vocab=args.vocab, name="mt_train")
    train_mt(exp, model, pairs, steps=args.steps, batch=96)
    print(f"{exp}: ESPnet MT model (config.yaml, valid.acc.ave.pth)")


if __name__ == "__main__":
    main()
