"""n-best generation on ESPnet weights: ESPnet's own inference program against kdst's batched search.

    python bench/espnet_search.py --threads 2                      # 500 sentences, beam 5, n-best 5
    python bench/espnet_search.py --trained EXP --data DIR --sentences 200   # agreement on a trained model
    python bench/espnet_search.py --device cuda                    # the same comparison on a GPU

The model is an ESPnet2 Transformer MT built by ESPnet's MTTask (6+6 layers, d 256, 4 heads,
ff 2048, 8000 tokens on each side) with random weights, saved in ESPnet's layout.  As in
bench/beam_search.py the output layer is scaled so next-token distributions are peaky like a
trained model's, and <sos/eos> gets a bias so hypotheses end at source-like lengths (random
weights otherwise run every hypothesis to the max length); <blank> is made unlikely (a trained
model never predicts it; ESPnet's search does not exclude it, kdst's does).

ESPnet: ``espnet2.bin.mt_inference.Text2Text`` called per sentence, as its CLI does (batch 1, its
BatchBeamSearch), beam 5, nbest 5, maxlenratio 1.5, minlenratio 0, ctc/lm/ngram weight 0,
penalty 0, normalize_length false.  kdst: the same model through kdst.models.espnet_bridge,
batches of similar-length sentences through kdst.decode.beam_search with the same beam and
lengths, once with ``espnet_rule`` (ESPnet's pruning and length rules: identical output
expected) and once with kdst's own rule (length_penalty 0).  Same process, same sentences.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from kdst.data.dataset import _pad  # noqa: E402
from kdst.decode.search import SearchOptions, beam_search  # noqa: E402
from kdst.models.espnet_bridge import import_espnet, load_espnet_teacher  # noqa: E402


def build_random(root: Path, vocab: int, output_scale: float, eos_bias: float) -> Path:
    task = import_espnet()["mt"]
    tokens = ["<blank>", "<unk>", *[f"w{i}" for i in range(vocab - 3)], "<sos/eos>"]
    args = task.get_parser().parse_args([])
    args.token_list, args.src_token_list, args.token_type, args.src_token_type = tokens, tokens, "word", "word"
    args.frontend, args.frontend_conf = "embed", {"embed_dim": 256, "positional_dropout_rate": 0.1}
    args.encoder = args.decoder = "transformer"
    args.encoder_conf = {"output_size": 256, "attention_heads": 4, "linear_units": 2048, "num_blocks": 6,
                         "input_layer": None}
    args.decoder_conf = {"attention_heads": 4, "linear_units": 2048, "num_blocks": 6}
    torch.manual_seed(0)
    model = task.build_model(args)
    with torch.no_grad():
        model.decoder.output_layer.weight.mul_(output_scale)
        model.decoder.output_layer.bias[0] = -1e4
        model.decoder.output_layer.bias[-1] += eos_bias
    exp = root / "exp" / "mt_random"
    exp.mkdir(parents=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.save(model.state_dict(), exp / "valid.acc.ave.pth")
    return exp


def random_sentences(num: int, vocab: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 31, (num,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]  # kdst source ids


def data_sentences(teacher_config: dict, data_dir: Path, num: int) -> list[list[int]]:
    from kdst.data.tokenizer import load_tokenizer

    tok = load_tokenizer(teacher_config["data"]["src_tokenizer"])
    lines = (data_dir / "text.en").read_text(encoding="utf-8").splitlines()[:num]
    return [tok.encode(line.split(" ", 1)[1]) for line in lines]


def run_espnet(exp: Path, teacher, sources, args) -> tuple[float, list[list[tuple[int, ...]]]]:
    from espnet2.bin.mt_inference import Text2Text

    from kdst.models.espnet_bridge import resolve

    # the BPE model by its resolved path: ESPnet reads config paths relative to its recipe dir
    t2t = Text2Text(mt_train_config=exp / "config.yaml", mt_model_file=exp / "valid.acc.ave.pth",
                    bpemodel=resolve(exp).config.get("bpemodel"),
                    maxlenratio=args.max_len_ratio, minlenratio=0.0, beam_size=args.beam, ctc_weight=0.0,
                    lm_weight=0.0, ngram_weight=0.0, penalty=0.0, nbest=args.nbest, normalize_length=False,
                    device=args.device)
    from_espnet = {int(e): k for k, e in enumerate(teacher.to_espnet.tolist())}
    src_map = teacher.src_to_espnet
    outputs = []
    start = time.perf_counter()
    with torch.no_grad():
        for ids in sources:
            results = t2t(src_map[torch.tensor(ids, device=src_map.device)])
            outputs.append([tuple(from_espnet[int(t)] for t in hyp.yseq[1:-1]) for *_, hyp in results])
    return time.perf_counter() - start, outputs


def run_kdst(teacher, sources, args, espnet_rule: bool) -> tuple[float, list[list[tuple[int, ...]]]]:
    options = SearchOptions(beam=args.beam, nbest=args.nbest, max_len_ratio=args.max_len_ratio, max_len_bias=0,
                            length_penalty=0.0, espnet_rule=espnet_rule)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs: list = [None] * len(sources)
    start = time.perf_counter()
    for b in range(0, len(order), args.batch):
        rows = order[b:b + args.batch]
        src, lengths = _pad([sources[i] for i in rows])
        for i, hyps in zip(rows, beam_search(teacher, src, lengths, options)):
            outputs[i] = [h.tokens for h in hyps]
    return time.perf_counter() - start, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--nbest", type=int, default=5)
    p.add_argument("--max-len-ratio", type=float, default=1.5)
    p.add_argument("--batch", type=int, default=100, help="kdst: sentences per batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda: both searches run there")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--output-scale", type=float, default=4.0)
    p.add_argument("--eos-bias", type=float, default=4.0)
    p.add_argument("--espnet-sentences", type=int, help="ESPnet on the first N only (it is slow); agreement on those")
    p.add_argument("--trained", type=Path, help="an ESPnet MT exp dir instead of the random model")
    p.add_argument("--data", type=Path, help="with --trained: a data dir whose text.en is translated")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="espnet_bench."))
    try:
        exp = args.trained or build_random(tmp, args.vocab, args.output_scale, args.eos_bias)
        teacher, config = load_espnet_teacher(exp, args.device)
        sources = (data_sentences(config, args.data, args.sentences) if args.trained
                   else random_sentences(args.sentences, args.vocab))
        esp_s, esp_out = run_espnet(exp, teacher, sources[:args.espnet_sentences or len(sources)], args)
        rule_s, rule_out = run_kdst(teacher, sources, args, espnet_rule=True)
        own_s, own_out = run_kdst(teacher, sources, args, espnet_rule=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n, m = len(sources), len(esp_out)
    lengths = [len(o[0]) for o in esp_out]
    maxed = sum(len(o[0]) >= int(args.max_len_ratio * (len(s) + 1)) for o, s in zip(esp_out, sources))
    print(f"{'trained ' + str(exp) if args.trained else 'random 6+6 d256 ' + str(args.vocab) + ' vocab'}, {n} "
          f"sentences (source {statistics.mean(map(len, sources)):.1f} tokens), beam {args.beam}, nbest "
          f"{args.nbest}, {torch.get_num_threads()} threads; ESPnet 1-best length mean "
          f"{statistics.mean(lengths):.1f} (min {min(lengths)}, max {max(lengths)}), {maxed} at the max length; "
          f"ESPnet ran on {m} of them")
    print(f"{'search':<34}{'seconds':>9}{'sent/s':>9}{'x ESPnet':>10}{'1-best same':>13}{'n-best same':>13}")
    for name, secs, out in [("ESPnet Text2Text (per sentence)", esp_s, esp_out),
                            ("kdst batched, espnet_rule", rule_s, rule_out),
                            ("kdst batched, kdst rule", own_s, own_out)]:
        same1 = sum(a[:1] == b[:1] for a, b in zip(out, esp_out)) / m
        same = sum(a == b for a, b in zip(out, esp_out)) / m
        rate = len(out) / secs
        print(f"{name:<34}{secs:>9.1f}{rate:>9.2f}{rate / (m / esp_s):>10.1f}{same1:>12.1%}{same:>13.1%}")


if __name__ == "__main__":
    main()
