"""Tiny random Hugging Face models saved with save_pretrained, for the hf: teacher tests (nothing is downloaded).

``save_whisper``: a WhisperForConditionalGeneration (1 + 2 layers, d_model 16) with a byte-level BPE
WhisperTokenizer trained on the given texts, Whisper's special tokens, a WhisperFeatureExtractor of
``bins`` mel bins and a ``window_s`` window (30 s in Whisper; 1-2 s keeps the tests fast), and a
multilingual generation config as Whisper's checkpoints have (language and task tokens,
suppress_tokens, begin_suppress_tokens).  ``save_marian``: a Marian model with a word-level tokenizer
over the words of the given texts.  Weights are drawn far from HF's small init (``sharpen``) so the
outputs depend on the input, and the end-of-sequence logit is raised so hypotheses end at mixed lengths.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WHISPER_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
                    "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def sharpen(model, std: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in name:
                p.normal_(0, std)


def whisper_tokenizer(texts: list[str]):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([f" {t}" for t in texts] + texts, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for special in WHISPER_SPECIALS:
        vocab[special] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return transformers.WhisperTokenizer(vocab=vocab, merges=merges, additional_special_tokens=WHISPER_SPECIALS[1:])


def save_whisper(directory: Path, texts: list[str], *, bins: int = 80, window_s: int = 1, seed: int = 0,
                 eos_bias: float = 2.2, std: float = 0.5, max_target_positions: int = 48,
                 says: str | None = None) -> Path:
    """``says``: a word the model transcribes every utterance as (its first token, then <|endoftext|>: the last
    norm's bias and those two rows of an untied output layer point one way, <|endoftext|>'s further, and it is
    suppressed first), for the recipe tests' WER filter: a known label against references with and without it."""
    import transformers

    tokenizer = whisper_tokenizer(texts)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in WHISPER_SPECIALS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    extractor = transformers.WhisperFeatureExtractor(feature_size=bins, chunk_length=window_s)
    config = transformers.WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=bins, d_model=16, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=extractor.nb_max_frames // 2, max_target_positions=max_target_positions,
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=None, begin_suppress_tokens=None, tie_word_embeddings=says is None)
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    sharpen(model, std)
    with torch.no_grad():  # Whisper ties its output layer to the embeddings: raise <|endoftext|> at the last norm
        row = model.proj_out.weight[eot]
        model.model.decoder.layer_norm.bias += eos_bias * row / row.norm()
        if says is not None:  # an output layer of its own: the word's and <|endoftext|>'s rows along one direction
            u = torch.nn.functional.normalize(torch.randn(config.d_model), dim=0)
            model.model.decoder.layer_norm.bias += 20 * u
            model.proj_out.weight[tokenizer(f" {says}", add_special_tokens=False).input_ids[0]] = 5 * u
            model.proj_out.weight[eot] = 6 * u
    space = tokenizer.convert_tokens_to_ids("\u0120")  # "Ġ": a lone space, suppressed at the start as Whisper does
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        suppress_tokens=[ids["<|startoflm|>"], ids["<|startofprev|>"], ids["<|nocaptions|>"],
                         tokenizer.convert_tokens_to_ids("!")],
        begin_suppress_tokens=[space, eot], max_length=max_target_positions)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    extractor.save_pretrained(directory)
    return directory


def save_marian(directory: Path, texts: list[str], *, seed: int = 0, eos_bias: float = 1.0, std: float = 0.3,
                d_model: int = 16) -> Path:
    """Marian's layout: </s> 0, <unk> 1, the words, <pad> last (its decoder start); forced </s> at the max length."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for t in texts for w in t.split()})
    vocab = {"</s>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    vocab["<pad>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    v = len(vocab)
    torch.manual_seed(seed)
    config = transformers.MarianConfig(vocab_size=v, d_model=d_model, encoder_layers=2, decoder_layers=2,
                                       encoder_attention_heads=2, decoder_attention_heads=2,
                                       encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
                                       max_position_embeddings=256, pad_token_id=v - 1, eos_token_id=0,
                                       decoder_start_token_id=v - 1, forced_eos_token_id=0)
    model = transformers.MarianMTModel(config).eval()
    sharpen(model, std)
    with torch.no_grad():
        model.final_logits_bias[0, 0] += eos_bias
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
