"""Models: attention encoder-decoders for ST, ASR and MT, and RNN transducers, built from their config."""

from kdst.config import ConfigError, ModelConfig, TransducerConfig, parse_model_config
from kdst.errors import KdstError
from kdst.models.encoder_decoder import EncoderDecoder, build_encoder_decoder
from kdst.models.transducer import Transducer, build_transducer


def build_model(config: ModelConfig | dict):
    """The model a config's ``model`` section names (a dataclass, or its plain values, checked first)."""
    if isinstance(config, dict):
        try:
            config = parse_model_config(config)
        except ConfigError as e:
            raise KdstError(str(e)) from None
    if isinstance(config, TransducerConfig):
        return build_transducer(config)
    return build_encoder_decoder(config)


__all__ = ["EncoderDecoder", "Transducer", "build_encoder_decoder", "build_model", "build_transducer"]
