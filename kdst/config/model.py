"""The ``model`` section: an attention encoder-decoder (ST, ASR, MT) or an RNN transducer.

Encoder-decoder (``type: encoder_decoder``, the default)::

    model:
      input: speech            # or text (MT: the encoder reads source tokens)
      input_dim: 80
      d_model: 256
      encoder: {type: conformer, layers: 12, heads: 4, ff_dim: 1024, kernel_size: 31, dropout: 0.1}
      decoder: {layers: 6, heads: 4, ff_dim: 2048, dropout: 0.1}
      ctc_weight: 0.3
      label_smoothing: 0.1

Transducer (``type: transducer``): the encoder section carries its own ``d_model``::

    model:
      type: transducer
      encoder: {type: conformer | transformer | streaming_conformer, d_model: 256, ...}
      predictor: {type: stateless, dim: 256, context_size: 2}    # or {type: lstm, dim, layers, dropout}
      joiner: {dim: 256}

``vocab_size``, ``src_vocab_size`` and ``ctc_vocab_size`` come from the tokenizers: the
trainer fills them in, and checkpoints keep them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdst.config.schema import ConfigError, build, require


def _check_block(d_model: int, layers: int, heads: int, ff_dim: int, dropout: float, prefix: str) -> None:
    require(layers >= 1, prefix + "layers", f"must be >= 1, not {layers}")
    require(heads >= 1, prefix + "heads", f"must be >= 1, not {heads}")
    require(d_model % heads == 0, prefix + "heads", f"{heads} heads do not divide d_model {d_model}")
    require(ff_dim >= 1, prefix + "ff_dim", f"must be >= 1, not {ff_dim}")
    require(0.0 <= dropout < 1.0, prefix + "dropout", f"must be in [0, 1), not {dropout}")


def _check_subsampling(input_dim: int, channels: int | None, prefix: str = "") -> None:
    # two stride-2 3x3 convolutions must leave at least one frequency bin
    require(input_dim >= 7, "input_dim", f"must be >= 7 (two stride-2 convolutions), not {input_dim}")
    require(channels is None or channels >= 1, prefix + "subsampling_channels", f"must be >= 1, not {channels}")


@dataclass(frozen=True)
class SpeechEncoderConfig:
    """Conv2d subsampling x4, then Conformer (torchaudio's) or Transformer blocks."""
    type: Literal["conformer", "transformer"] = "conformer"
    layers: int = 12
    heads: int = 4
    ff_dim: int = 1024
    kernel_size: int = 31  # Conformer depthwise convolution, odd ("same" padding)
    dropout: float = 0.1
    subsampling_channels: int | None = None  # default: d_model

    def __post_init__(self):
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "kernel_size",
                f"must be odd and >= 1, not {self.kernel_size}")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Token embeddings and Transformer blocks (MT)."""
    type: Literal["transformer"] = "transformer"
    layers: int = 6
    heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1


@dataclass(frozen=True)
class DecoderConfig:
    layers: int = 6
    heads: int = 4
    ff_dim: int = 2048
    dropout: float = 0.1


@dataclass(frozen=True)
class EncoderDecoderConfig:
    type: Literal["encoder_decoder"] = "encoder_decoder"
    input: Literal["speech", "text"] = "speech"
    input_dim: int = 80
    d_model: int = 256
    encoder: SpeechEncoderConfig | TextEncoderConfig = SpeechEncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    ctc_weight: float = 0.0
    label_smoothing: float = 0.1
    vocab_size: int | None = None
    src_vocab_size: int | None = None
    ctc_vocab_size: int | None = None

    @staticmethod
    def variant_defaults(raw: dict) -> dict:
        """Which encoder an untyped ``encoder`` section is: it follows ``input``."""
        return {"encoder": TextEncoderConfig if raw.get("input") == "text" else SpeechEncoderConfig}

    def __post_init__(self):
        text = self.input == "text"
        if text != isinstance(self.encoder, TextEncoderConfig):
            raise ConfigError("encoder.type", f"'{self.encoder.type}' is not an encoder for input {self.input} "
                                              f"({'transformer' if text else 'conformer, transformer'})")
        e, d = self.encoder, self.decoder
        require(self.d_model >= 1, "d_model", f"must be >= 1, not {self.d_model}")
        _check_block(self.d_model, e.layers, e.heads, e.ff_dim, e.dropout, "encoder.")
        _check_block(self.d_model, d.layers, d.heads, d.ff_dim, d.dropout, "decoder.")
        if not text:
            _check_subsampling(self.input_dim, e.subsampling_channels, "encoder.")
        require(0.0 <= self.ctc_weight < 1.0, "ctc_weight", f"must be in [0, 1), not {self.ctc_weight}")
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), not {self.label_smoothing}")
        for key in ("vocab_size", "src_vocab_size", "ctc_vocab_size"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be >= 1, not {value}")


@dataclass(frozen=True)
class TransducerEncoderConfig(SpeechEncoderConfig):
    d_model: int = 256


@dataclass(frozen=True)
class StreamingEncoderConfig:
    """Chunk-wise causal Conformer: ``chunk_size`` encoder frames per chunk, ``left_chunks`` seen back
    (-1: all)."""
    type: Literal["streaming_conformer"] = "streaming_conformer"
    d_model: int = 256
    layers: int = 12
    heads: int = 4
    ff_dim: int = 1024
    kernel_size: int = 15
    dropout: float = 0.1
    subsampling_channels: int | None = None
    chunk_size: int = 16
    left_chunks: int = -1

    def __post_init__(self):
        require(self.kernel_size >= 1, "kernel_size", f"must be >= 1, not {self.kernel_size}")
        require(self.chunk_size >= 1, "chunk_size", f"must be >= 1, not {self.chunk_size}")
        require(self.left_chunks >= -1, "left_chunks", f"must be >= -1 (-1: all), not {self.left_chunks}")


@dataclass(frozen=True)
class StatelessPredictorConfig:
    """The last ``context_size`` labels, embedded and mixed by a depthwise convolution."""
    type: Literal["stateless"] = "stateless"
    dim: int = 256
    context_size: int = 2

    def __post_init__(self):
        require(self.dim >= 1, "dim", f"must be >= 1, not {self.dim}")
        require(self.context_size >= 1, "context_size", f"must be >= 1, not {self.context_size}")


@dataclass(frozen=True)
class LstmPredictorConfig:
    type: Literal["lstm"] = "lstm"
    dim: int = 256
    layers: int = 1
    dropout: float = 0.1

    def __post_init__(self):
        require(self.dim >= 1, "dim", f"must be >= 1, not {self.dim}")
        require(self.layers >= 1, "layers", f"must be >= 1, not {self.layers}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), not {self.dropout}")


@dataclass(frozen=True)
class JoinerConfig:
    dim: int = 256

    def __post_init__(self):
        require(self.dim >= 1, "dim", f"must be >= 1, not {self.dim}")


@dataclass(frozen=True)
class TransducerConfig:
    type: Literal["transducer"] = "transducer"
    input_dim: int = 80
    encoder: TransducerEncoderConfig | StreamingEncoderConfig = TransducerEncoderConfig()
    predictor: StatelessPredictorConfig | LstmPredictorConfig = StatelessPredictorConfig()
    joiner: JoinerConfig = JoinerConfig()
    ctc_weight: float = 0.0
    vocab_size: int | None = None

    @property
    def input(self) -> str:
        return "speech"

    def __post_init__(self):
        e = self.encoder
        require(e.d_model >= 1, "encoder.d_model", f"must be >= 1, not {e.d_model}")
        _check_block(e.d_model, e.layers, e.heads, e.ff_dim, e.dropout, "encoder.")
        _check_subsampling(self.input_dim, e.subsampling_channels, "encoder.")
        require(0.0 <= self.ctc_weight < 1.0, "ctc_weight", f"must be in [0, 1), not {self.ctc_weight}")
        require(self.vocab_size is None or self.vocab_size >= 1, "vocab_size",
                f"must be >= 1, not {self.vocab_size}")


ModelConfig = EncoderDecoderConfig | TransducerConfig


def parse_model_config(raw, path: str = "model") -> ModelConfig:
    """The model section, whichever kind ``type`` names (default: an encoder-decoder)."""
    kind = raw.get("type", "encoder_decoder") if isinstance(raw, dict) else None
    if kind == "transducer":
        return build(TransducerConfig, raw, path)
    if kind not in (None, "encoder_decoder"):
        raise ConfigError(f"{path}.type", f"'{kind}' is not one of encoder_decoder, transducer")
    return build(EncoderDecoderConfig, raw, path)
