"""kdst: knowledge distillation for speech translation and speech recognition."""

__version__ = "0.1.0"
