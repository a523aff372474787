"""train.init_parts: an ASR model's encoder and CTC head, an MT model's decoder, into an ST student."""

from __future__ import annotations

import logging

import pytest
import torch

from helpers import make_mt_task, write_config
from kdst.config import ConfigError, TrainConfig, build, parse_model_config
from kdst.errors import KdstError
from kdst.models import build_model
from kdst.models.loading import load_submodules
from kdst.train.trainer import load_config, run


def speech_model(vocab: int, ctc_vocab: int, layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = parse_model_config({"input": "speech", "input_dim": 20, "d_model": 16, "vocab_size": vocab,
                                 "ctc_weight": 0.3, "ctc_vocab_size": ctc_vocab,
                                 "encoder": {"layers": layers, "heads": 2, "ff_dim": 32, "subsampling_channels": 8},
                                 "decoder": {"layers": 1, "heads": 2, "ff_dim": 32}})
    return build_model(config)


def test_encoder_and_ctc_come_from_the_asr_model_the_decoder_stays():
    asr = speech_model(vocab=30, ctc_vocab=30, seed=1)  # ASR: the transcript vocabulary on both heads
    st = speech_model(vocab=50, ctc_vocab=30, seed=2)  # ST: translation vocabulary, CTC on the transcript
    decoder_before = {k: v.clone() for k, v in st.state_dict().items() if k.startswith("decoder.")}
    copied = load_submodules(st, asr.state_dict(), "asr.pt", ("encoder", "ctc"))
    theirs, mine = asr.state_dict(), st.state_dict()
    wanted = [k for k in mine if k.startswith(("encoder.", "ctc."))]
    assert copied == len(wanted) > 0
    assert all(torch.equal(mine[k], theirs[k]) for k in wanted)
    assert all(torch.equal(mine[k], v) for k, v in decoder_before.items())


def test_shape_and_name_mismatches_are_one_line_errors():
    st = speech_model(vocab=50, ctc_vocab=30)
    deeper = speech_model(vocab=50, ctc_vocab=30, layers=3)
    other_ctc = speech_model(vocab=50, ctc_vocab=40)
    with pytest.raises(KdstError, match=r"asr\.pt: ctc\.weight is \(40, 16\) there and \(30, 16\) in this model"):
        load_submodules(st, other_ctc.state_dict(), "asr.pt", ("ctc",))
    with pytest.raises(KdstError, match=r"asr\.pt: has no encoder\.\S*2\.\S* \(33 tensor\(s\) of encoder missing\)"):
        load_submodules(deeper, st.state_dict(), "asr.pt", ("encoder",))
    with pytest.raises(KdstError, match=r"train\.init_parts: this model has no submodule 'encoderz'"):
        load_submodules(st, st.state_dict(), "asr.pt", ("encoderz",))


def test_config_of_the_parts():
    parts = build(TrainConfig, {"init_parts": [{"checkpoint": "asr.pt", "modules": ["encoder", "ctc"]},
                                               {"checkpoint": "mt.pt", "modules": ["decoder"]}]}).init_parts
    assert [(p.checkpoint, p.modules) for p in parts] == [("asr.pt", ("encoder", "ctc")), ("mt.pt", ("decoder",))]
    with pytest.raises(ConfigError, match="init_parts: give train.init .* not both"):
        build(TrainConfig, {"init": "a.pt", "init_parts": [{"checkpoint": "asr.pt", "modules": ["encoder"]}]})
    with pytest.raises(ConfigError, match="init_parts: encoder would come from two checkpoints"):
        build(TrainConfig, {"init_parts": [{"checkpoint": "a.pt", "modules": ["encoder"]},
                                           {"checkpoint": "b.pt", "modules": ["encoder", "decoder"]}]})
    with pytest.raises(ConfigError, match=r"init_parts\[0\]\.modules: must name a submodule"):
        build(TrainConfig, {"init_parts": [{"checkpoint": "a.pt", "modules": []}]})


def test_the_trainer_copies_the_parts_from_their_checkpoints(tmp_path, caplog):
    root = make_mt_task(tmp_path / "task")
    run(load_config(write_config(root, tmp_path / "a.yaml", epochs=1)), tmp_path / "a")
    run(load_config(write_config(root, tmp_path / "b.yaml", epochs=1, seed=3)), tmp_path / "b")
    a, b = tmp_path / "a" / "epoch-1.pt", tmp_path / "b" / "epoch-1.pt"
    path = write_config(root, tmp_path / "c.yaml", epochs=1, max_steps=1,
                        init_parts=[{"checkpoint": str(a), "modules": ["encoder"]},
                                    {"checkpoint": str(b), "modules": ["decoder"]}])
    with caplog.at_level(logging.INFO, logger="kdst.train"):
        run(load_config(path), tmp_path / "c")
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("initialised encoder (") and m.endswith(str(a)) for m in said)
    assert any(m.startswith("initialised decoder (") and m.endswith(str(b)) for m in said)
