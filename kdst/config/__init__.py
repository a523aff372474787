"""Typed configuration: frozen dataclasses for every section of a training config.

The lowest layer of kdst besides errors: data, models and programs read these classes;
this package imports nothing else of kdst.
"""

from kdst.config.load import TrainingConfig, apply_override, load_config, parse_config, parse_kd, resume_differences
from kdst.config.model import (DecoderConfig, EncoderDecoderConfig, JoinerConfig, LstmPredictorConfig, ModelConfig,
                               SpeechEncoderConfig, StatelessPredictorConfig, StreamingEncoderConfig,
                               TextEncoderConfig, TransducerConfig, TransducerEncoderConfig, parse_model_config)
from kdst.config.schema import ConfigError, build, to_dict
from kdst.config.sections import (CachedWordKDConfig, DataConfig, KdConfig, LatticeKDConfig, NbestTargetsConfig,
                                  OnlineWordKDConfig, OptimConfig, ScheduleConfig, SpecAugmentConfig,
                                  TrainConfig)

__all__ = [
    "CachedWordKDConfig", "ConfigError", "DataConfig", "DecoderConfig", "EncoderDecoderConfig", "JoinerConfig",
    "KdConfig", "LatticeKDConfig", "LstmPredictorConfig", "ModelConfig", "NbestTargetsConfig", "OnlineWordKDConfig",
    "OptimConfig", "ScheduleConfig", "SpecAugmentConfig", "SpeechEncoderConfig", "StatelessPredictorConfig", "StreamingEncoderConfig",
    "TextEncoderConfig", "TrainConfig", "TrainingConfig", "TransducerConfig", "TransducerEncoderConfig",
    "apply_override", "build", "load_config", "parse_config", "parse_kd", "parse_model_config",
    "resume_differences", "to_dict",
]
