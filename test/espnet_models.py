"""Tiny ESPnet2 models built with ESPnet's own task builders and saved in ESPnet's layout.

A model dir holds what an ESPnet recipe leaves in ``exp/<dir>``: ``config.yaml`` (the
training args, the token list inline), ``valid.acc.ave.pth`` (the state dict), and
beside it the files the config names: a BPE model per language under
``data/token_list/`` (the config paths are relative to the recipe dir, the parent of
``exp/``), as ``espnet2/bin/tokenize_text.py`` and ``spm_train`` make them.
Used by test/models/test_espnet_bridge.py, the recipe test and bench/espnet_search.py.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import sentencepiece as spm
import torch
import yaml

from kdst.models.espnet_bridge import import_espnet


def train_bpe(texts: list[str], out: Path, vocab_size: int) -> list[str]:
    """An ESPnet-style BPE model (sentencepiece defaults: <unk> 0, <s> 1, </s> 2) and its token list:
    <blank>, <unk>, the pieces of the text by frequency, <sos/eos> (tokenize_text --add_symbol ...)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, model_type="bpe",
                                   vocab_size=vocab_size, character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    out.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    counts = Counter(p for t in texts for p in sp.encode(t, out_type=str))
    pieces = sorted(counts, key=lambda p: (-counts[p], p))
    return ["<blank>", "<unk>", *pieces, "<sos/eos>"]


def _save(model, args, recipe: Path, name: str) -> Path:
    exp = recipe / "exp" / name
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "config.yaml").write_text(yaml.safe_dump(vars(args), allow_unicode=True), encoding="utf-8")
    torch.save(model.state_dict(), exp / "valid.acc.ave.pth")
    return exp


def build_mt(recipe: Path, src_texts: list[str], tgt_texts: list[str], *, d: int = 32, heads: int = 2,
             ff: int = 64, layers: int = 2, vocab: int = 60, name: str = "mt_train", seed: int = 0,
             normalize_before: bool = True, save: bool = True, eos_bias: float = 0.0):
    """An ESPnet Transformer MT model (frontend: embed) with BPE on both sides; returns (exp dir, model).

    Random weights, except that <blank> is never likely (as in any trained model: it is never a
    target, and ESPnet's search does not exclude it while kdst's does) and ``eos_bias`` raises
    <sos/eos> so that hypotheses end at mixed lengths instead of all running to the max length."""
    task = import_espnet()["mt"]
    src_tokens = train_bpe(src_texts, recipe / "data/token_list/src_bpe/bpe.model", vocab)
    tgt_tokens = train_bpe(tgt_texts, recipe / "data/token_list/tgt_bpe/bpe.model", vocab)
    args = task.get_parser().parse_args([])
    args.token_list, args.src_token_list = tgt_tokens, src_tokens
    args.token_type = args.src_token_type = "bpe"
    args.bpemodel, args.src_bpemodel = "data/token_list/tgt_bpe/bpe.model", "data/token_list/src_bpe/bpe.model"
    args.frontend, args.frontend_conf = "embed", {"embed_dim": d, "positional_dropout_rate": 0.1}
    args.encoder = args.decoder = "transformer"
    args.encoder_conf = {"output_size": d, "attention_heads": heads, "linear_units": ff, "num_blocks": layers,
                         "input_layer": None, "normalize_before": normalize_before}
    args.decoder_conf = {"attention_heads": heads, "linear_units": ff, "num_blocks": layers,
                         "normalize_before": normalize_before}
    args.model_conf = {"lsm_weight": 0.1, "length_normalized_loss": False}
    torch.manual_seed(seed)
    model = task.build_model(args)  # also puts the token lists inline, as ESPnet's config.yaml has them
    with torch.no_grad():
        model.decoder.output_layer.bias[0] = -1e4
        model.decoder.output_layer.bias[-1] += eos_bias
    return (_save(model, args, recipe, name) if save else None), model


def build_asr(recipe: Path, texts: list[str], *, input_size: int = 20, d: int = 32, vocab: int = 40,
              name: str = "asr_train", seed: int = 0):
    """An ESPnet Transformer ASR model reading features (frontend: null, input_size), conv2d subsampling."""
    task = import_espnet()["asr"]
    tokens = train_bpe(texts, recipe / "data/token_list/bpe/bpe.model", vocab)
    args = task.get_parser().parse_args([])
    args.token_list, args.token_type, args.bpemodel = tokens, "bpe", "data/token_list/bpe/bpe.model"
    args.input_size, args.normalize, args.specaug = input_size, None, None
    args.encoder = args.decoder = "transformer"
    args.encoder_conf = {"output_size": d, "attention_heads": 2, "linear_units": 64, "num_blocks": 2,
                         "input_layer": "conv2d"}
    args.decoder_conf = {"attention_heads": 2, "linear_units": 64, "num_blocks": 2}
    args.model_conf = {"ctc_weight": 0.3, "lsm_weight": 0.1}
    torch.manual_seed(seed)
    model = task.build_model(args)
    with torch.no_grad():
        model.decoder.output_layer.bias[0] = -1e4  # <blank>: see build_mt
    return _save(model, args, recipe, name), model


def train_mt(exp: Path, model, pairs: list[tuple[str, str]], *, steps: int = 300, batch: int = 64,
             lr: float = 2e-3, seed: int = 0, log_every: int = 50) -> None:
    """A few hundred Adam steps of ESPnet's own MT loss (``model(text, ..., src_text, ...)``), then the
    weights are saved over ``exp/valid.acc.ave.pth``.  Token ids the ESPnet way: BPE pieces through the
    token lists (unknown pieces -> <unk>), padded with -1."""
    import yaml as _yaml

    config = _yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    recipe = exp.parent.parent
    sides = []
    for prefix in ("src_", ""):
        sp = spm.SentencePieceProcessor(model_file=str(recipe / config[f"{prefix}bpemodel"]))
        ids = {t: i for i, t in enumerate(config[f"{prefix}token_list"])}
        sides.append(lambda text, sp=sp, ids=ids: [ids.get(p, 1) for p in sp.encode(text, out_type=str)])
    data = [(sides[0](s), sides[1](t)) for s, t in pairs]
    pad = lambda seqs: torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True,  # noqa
                                                        padding_value=-1)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    model.train()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:  # linear warm-up over the first 10%
            group["lr"] = lr * min(1.0, step / max(1, steps // 10))
        rows = torch.randint(len(data), (batch,), generator=generator).tolist()
        src, tgt = [data[r][0] for r in rows], [data[r][1] for r in rows]
        loss, stats, _ = model(text=pad(tgt), text_lengths=torch.tensor([len(t) for t in tgt]),
                               src_text=pad(src), src_text_lengths=torch.tensor([len(s) for s in src]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if log_every and step % log_every == 0:
            print(f"step {step}: loss {loss.item():.3f} acc {float(stats.get('acc') or 0):.3f}", flush=True)
    model.eval()
    torch.save(model.state_dict(), exp / "valid.acc.ave.pth")
