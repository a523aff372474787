"""n-best generation on Hugging Face MT weights: ``generate`` against kdst's batched search with ``hf_rule``.

    python bench/hf_nbest.py --threads 2                    # 100 sentences, beam 5, 5 returned
    python bench/hf_nbest.py --device cuda --sentences 500  # the same comparison on a GPU

The model is a MarianMTModel at the size of OPUS-MT en-de (6+6 layers, d_model 512, 8 heads, ffn 2048,
58101 tokens, shared embeddings) with random weights, saved with save_pretrained beside a word-level
tokenizer of as many tokens and OPUS-MT's generation config (decoder start <pad>, bad_words_ids <pad>,
forced </s> at the max length).  The output layer is untied and scaled (``--output-scale``) so the
next-token distributions are peaky like a trained model's, and </s> gets a bias (``--eos-bias``) so
hypotheses end at source-like lengths; random weights otherwise run every hypothesis to the max length.

Both searches translate the same random sources (10-30 tokens and </s>), in the same batches of
``--batch`` sentences sorted by length (as kdst decode batches; a user of generate would pad batches
the same way): HF ``model.generate(input_ids, attention_mask, num_beams=5, num_return_sequences=5,
max_new_tokens=64)``, and kdst.decode.beam_search on the model loaded as ``hf:DIR`` with
``SearchOptions(beam=5, nbest=5, max_len_ratio=0, max_len_bias=64, hf_rule=True)``.  The n-best lists
are compared token for token (all five, in order).  The time inside the model's own forward is measured
for both (a wrapper around ``MarianMTModel.forward``): the rest is each search's own work, which is
what kdst can remove; the forward (above all the 512 x 58101 output layer of every beam at every
step) is the same computation in both.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdst.data.dataset import _pad
from kdst.decode.search import SearchOptions, beam_search
from kdst.models.teacher import load_teacher

VOCAB = 58101  # OPUS-MT en-de


def build(root: Path, vocab: int, output_scale: float, eos_bias: float) -> Path:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = {"</s>": 0, "<unk>": 1, **{f"w{i}": i + 2 for i in range(vocab - 3)}, "<pad>": vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    config = transformers.MarianConfig(vocab_size=vocab, d_model=512, encoder_layers=6, decoder_layers=6,
                                       encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                                       decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=vocab - 1,
                                       eos_token_id=0, decoder_start_token_id=vocab - 1, forced_eos_token_id=0,
                                       tie_word_embeddings=False, scale_embedding=True)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():
        model.lm_head.weight.copy_(model.model.shared.weight * output_scale)
        model.final_logits_bias[0, 0] += eos_bias
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=vocab - 1, eos_token_id=0, pad_token_id=vocab - 1, forced_eos_token_id=0,
        bad_words_ids=[[vocab - 1]], max_length=512, num_beams=4)
    out = root / "opus_mt_random"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_sources(num: int, vocab: int, seed: int = 1) -> list[list[int]]:
    """kdst source ids: 10-30 word ids (kdst 3..V-1) and </s> (kdst 2), as the exported tokenizer writes them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 31, (num,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() + [2] for n in lengths]


class ForwardTimer:
    """Seconds inside the HF model's forward, whoever calls it (the decoder steps: both searches run the encoder
    through get_encoder()), and the decoder rows it computed (beams x utterances, summed over the steps)."""

    def __init__(self, model):
        self.model, self.seconds, self.rows = model, 0.0, 0
        self.forward = model.forward
        model.forward = self.timed

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.forward(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.rows += kwargs["decoder_input_ids"].shape[0]

    def reset(self) -> None:
        self.seconds, self.rows = 0.0, 0


def batches(sources: list[list[int]], size: int) -> list[list[int]]:
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    return [order[b:b + size] for b in range(0, len(order), size)]


def run_generate(teacher, sources, args, timer) -> tuple[float, float, list]:
    model, to_hf, pad = teacher.hf, teacher.src_to_hf.cpu(), teacher.pad_hf
    from_hf = {h: i for i, h in enumerate(teacher.to_hf.tolist())}
    eos = model.generation_config.eos_token_id
    outputs: list = [None] * len(sources)
    timer.reset()
    start = time.perf_counter()
    with torch.inference_mode():
        for rows in batches(sources, args.batch):
            src, lengths = _pad([sources[i] for i in rows])
            mask = torch.arange(src.shape[1])[None] < lengths[:, None]
            ids = to_hf[src].masked_fill(~mask, pad)
            seqs = model.generate(input_ids=ids.to(args.device), attention_mask=mask.long().to(args.device),
                                  num_beams=args.beam, num_return_sequences=args.nbest,
                                  max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty)
            seqs = seqs.view(len(rows), args.nbest, -1)[:, :, 1:].tolist()
            for i, hyps in zip(rows, seqs):
                outputs[i] = [tuple(from_hf[t] for t in _until_eos(h, eos, args.max_new_tokens)) for h in hyps]
    return time.perf_counter() - start, timer.seconds, timer.rows, outputs


def _until_eos(tokens: list[int], eos: int, max_new: int) -> list[int]:
    """A hypothesis without </s> and the padding after it; a hypothesis cut at the max length keeps its last token."""
    return tokens[:tokens.index(eos)] if eos in tokens else tokens[:max_new]


def run_kdst(teacher, sources, args, timer) -> tuple[float, float, list]:
    options = SearchOptions(beam=args.beam, nbest=args.nbest, max_len_ratio=0, max_len_bias=args.max_new_tokens,
                            length_penalty=args.length_penalty, hf_rule=True)
    outputs: list = [None] * len(sources)
    timer.reset()
    start = time.perf_counter()
    for rows in batches(sources, args.batch):
        src, lengths = _pad([sources[i] for i in rows])
        for i, hyps in zip(rows, beam_search(teacher, src, lengths, options)):
            outputs[i] = [h.tokens for h in hyps]
    return time.perf_counter() - start, timer.seconds, timer.rows, outputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=100)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--nbest", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=16, help="sentences per batch, both searches")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--output-scale", type=float, default=5.0)
    p.add_argument("--eos-bias", type=float, default=8.0)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two searches this many times; best time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="hf_bench."))
    try:
        teacher = load_teacher(f"hf:{build(tmp, args.vocab, args.output_scale, args.eos_bias)}", args.device).model
        sources = random_sources(args.sentences, args.vocab)
        timer = ForwardTimer(teacher.hf)
        runs: dict[str, list] = {"generate": [], "kdst": []}
        for _ in range(args.repeats):
            runs["generate"].append(run_generate(teacher, sources, args, timer))
            runs["kdst"].append(run_kdst(teacher, sources, args, timer))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {name: min(r, key=lambda x: x[0]) for name, r in runs.items()}
    ref = best["generate"][3]
    n = len(sources)
    lengths = [len(o[0]) for o in ref]
    print(f"random Marian 6+6 d512 {args.vocab} vocab, {n} sentences (source {statistics.mean(map(len, sources)):.1f} "
          f"tokens), beam {args.beam}, {args.nbest} returned, batches of {args.batch}, {torch.get_num_threads()} "
          f"threads, {args.device}; generate's 1-best {statistics.mean(lengths):.1f} tokens (min {min(lengths)}, "
          f"max {max(lengths)}), {sum(x >= args.max_new_tokens - 1 for x in lengths)} at the max length")
    print(f"{'search':<10}{'seconds':>9}{'sent/s':>9}{'x generate':>12}{'forward s':>11}{'other s':>9}"
          f"{'rows':>8}{'ms/row':>8}{'1-best same':>13}{'n-best same':>13}")
    for name, (secs, forward, rows, out) in best.items():
        same1 = sum(a[:1] == b[:1] for a, b in zip(out, ref)) / n
        same = sum(a == b for a, b in zip(out, ref)) / n
        print(f"{name:<10}{secs:>9.1f}{n / secs:>9.2f}{best['generate'][0] / secs:>12.2f}{forward:>11.1f}"
              f"{secs - forward:>9.1f}{rows:>8}{1000 * forward / rows:>8.2f}{same1:>12.1%}{same:>13.1%}")


if __name__ == "__main__":
    main()
