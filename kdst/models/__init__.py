"""Models: attention encoder-decoders for ST, ASR and MT, built from YAML."""

from kdst.models.encoder_decoder import EncoderDecoder, build_model

__all__ = ["EncoderDecoder", "build_model"]
