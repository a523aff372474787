"""A training config: YAML plus ``--set section.key=value`` overrides, checked into dataclasses.

    data:  kdst.config.sections.DataConfig       model: kdst.config.model (encoder-decoder or transducer)
    optim: OptimConfig                            train: TrainConfig
    kd:    (optional) OnlineWordKDConfig | CachedWordKDConfig (encoder-decoder students, by whether
           ``cache`` is given), each with an optional ``frame`` (FrameKDConfig), FrameOnlyKDConfig (only
           ``frame``) or LatticeKDConfig (transducer students)

Any problem is one KdstError naming where the value came from and its key path:
``conf/train_st.yaml: train.epochz: unknown key (did you mean train.epochs?)`` or
``--set optm.lr=0.1: optm: unknown key (did you mean optim?)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from kdst.config.model import ModelConfig, TransducerConfig, parse_model_config
from kdst.config.schema import ConfigError, build, differences, join, to_dict
from kdst.config.sections import (CachedWordKDConfig, DataConfig, FrameOnlyKDConfig, KdConfig, LatticeKDConfig,
                                  OnlineWordKDConfig, OptimConfig, TrainConfig)
from kdst.errors import KdstError


@dataclass(frozen=True)
class TrainingConfig:
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig = TrainConfig()
    kd: KdConfig | None = None

    def to_dict(self) -> dict:
        """Plain values, as config.yaml in the exp dir and checkpoints hold them."""
        return to_dict(self)


SECTIONS = ("data", "model", "optim", "train", "kd")
REQUIRED_SECTIONS = ("data", "model", "optim")


def parse_config(raw) -> TrainingConfig:
    """A TrainingConfig from plain values (a YAML document, a checkpoint's saved config); ConfigError."""
    if raw is None or raw == {}:
        raise ConfigError("", f"empty config (expected the sections {', '.join(SECTIONS)})")
    if not isinstance(raw, dict):
        raise ConfigError("", f"expected a mapping of sections ({', '.join(SECTIONS)}), got "
                              f"{'a list' if isinstance(raw, list) else type(raw).__name__}")
    for key in raw:
        if key not in SECTIONS:
            build(TrainingConfig, {key: None})  # raises the unknown-key error with its suggestion
    for key in REQUIRED_SECTIONS:
        if key not in raw:
            raise ConfigError(key, "missing section")
    data = build(DataConfig, raw["data"], "data")
    model = parse_model_config(raw["model"])
    if data.input != model.input:
        raise ConfigError("data.input", f"'{data.input}' but model.input is '{model.input}'")
    return TrainingConfig(data=data, model=model, optim=build(OptimConfig, raw["optim"], "optim"),
                          train=build(TrainConfig, raw.get("train"), "train"), kd=parse_kd(raw.get("kd"), model))


def parse_kd(raw, model: ModelConfig) -> KdConfig | None:
    """The kd section's variant: lattice KD for a transducer student; for an encoder-decoder, word-level
    KD from a cache when ``cache`` is given, else from an online teacher; with only ``frame``, frame-level
    KD alone (``frame`` beside word-level KD is a field of the word-level variants)."""
    if not raw:
        return None
    if isinstance(model, TransducerConfig):
        if isinstance(raw, dict) and "frame" in raw:
            raise ConfigError("kd.frame", "frame-level KD is for encoder-decoder students with a CTC branch; "
                                          "a transducer distils over its lattice (kd.mode)")
        return build(LatticeKDConfig, raw, "kd")
    if isinstance(raw, dict) and "frame" in raw and set(raw) <= {"frame"}:
        return build(FrameOnlyKDConfig, raw, "kd")
    if isinstance(raw, dict) and "frame" in raw and not {"teacher", "cache"} & set(raw):
        other = next(key for key in raw if key != "frame")
        raise ConfigError(f"kd.{other}", "word-level KD needs kd.teacher or kd.cache; frame-level KD alone "
                                         "takes only kd.frame")
    if isinstance(raw, dict) and "cache" in raw:
        return build(CachedWordKDConfig, raw, "kd")
    if isinstance(raw, dict) and "teacher" not in raw:
        raise ConfigError("kd", "needs a teacher (kd.teacher: a checkpoint or espnet:PATH) or a cache (kd.cache)")
    return build(OnlineWordKDConfig, raw, "kd")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainingConfig:
    """The training config of a YAML file with ``section.key=value`` overrides (values read as YAML)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdstError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KdstError(f"{path}: cannot read the config: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise KdstError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    set_by: dict[str, str] = {}
    if isinstance(raw, dict):
        for item in overrides:
            key = apply_override(raw, item)
            set_by[key] = item
    elif overrides and raw is not None:
        pass  # the error below says what the file is
    try:
        return parse_config(raw)
    except ConfigError as e:
        source = next((item for key, item in set_by.items() if _related(key, e.key)), str(path))
        if source != str(path):
            source = f"--set {source}"
        raise KdstError(f"{source}: {e}") from None


def apply_override(raw: dict, item: str) -> str:
    """Apply ``section.key=value`` to the raw config; returns the key."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise KdstError(f"--set {item}: not key=value (e.g. --set train.epochs=20)")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise KdstError(f"--set {item}: the value is not valid YAML") from None
    node, done = raw, ""
    *parents, leaf = key.split(".")
    for name in parents:
        done = join(done, name)
        child = node.setdefault(name, {})
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise KdstError(f"--set {item}: {done} is a value, not a section")
        node = child
    node[leaf] = parsed
    return key


def _related(a: str, b: str) -> bool:
    """Whether one key path is the other or contains it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def resume_differences(saved: TrainingConfig, config: TrainingConfig) -> list[str]:
    """Keys that differ between a stopped run's config and this one, besides what may change on resume."""
    free = set(TrainConfig.RESUMABLE_CHANGES)
    train = replace(config.train, **{f.name: getattr(saved.train, f.name) for f in fields(TrainConfig)
                                     if f.name in free})
    return differences(saved, replace(config, train=train))
