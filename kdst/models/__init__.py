"""Models: attention encoder-decoders for ST, ASR and MT, and RNN transducers, built from YAML."""

from kdst.models.encoder_decoder import EncoderDecoder
from kdst.models.encoder_decoder import build_model as build_encoder_decoder
from kdst.models.transducer import Transducer, build_transducer


def build_model(config: dict):
    """The model a config's ``model`` section names: ``type: transducer``, or an encoder-decoder."""
    if config.get("type") == "transducer":
        return build_transducer(config)
    return build_encoder_decoder(config)


__all__ = ["EncoderDecoder", "Transducer", "build_encoder_decoder", "build_model", "build_transducer"]
