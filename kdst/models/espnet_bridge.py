"""ESPnet2 encoder-decoders (MT, ST, ASR) as kdst teachers: ``--teacher-espnet EXP_DIR_OR_ZIP``.

The only place kdst imports espnet (the optional extra ``kdst[espnet]``).  A teacher is

- an ESPnet exp dir: ``config.yaml`` and a model file (``valid.acc.ave.pt``, or the one
  named by ``model_file=``, or the single ``*.pth``/``*.pt`` there);
- a packed model (espnet_model_zoo style zip): ``meta.yaml`` names the config
  (``yaml_files``) and the model (``files``); it is unpacked beside the zip once;
- or a ``config.yaml`` path itself.

Paths in the config (``token_list``, ``bpemodel``, ``src_token_list``, ``src_bpemodel``,
``normalize_conf.stats_file``) are read relative to the current directory, the model
dir (a zip's root) or the recipe dir above ``exp/``, whichever has them.  The model is
built by ESPnet's own task class (``MTTask``/``STTask``/``ASRTask.build_model_from_file``)
and wrapped in :class:`EspnetTeacher`, which has what kdst's teacher uses read
(``encode``, ``decoder_logits``, ``decoder.init_state/step``, ``vocab_size``).

Vocabulary: ESPnet lists hold ``<blank>`` 0, ``<unk>`` 1 and ``<sos/eos>`` last; kdst
puts ``<sos/eos>`` at 2.  The teacher's token list becomes a kdst tokenizer directory
(``type: espnet``, kdst.data.tokenizer) with ``<sos/eos>`` moved to id 2 and the other
tokens shifted by one, and the wrapper translates ids at its edges, so kdst's search,
losses and caches see kdst ids only.  The student adopts that directory.

Inputs: MT teachers read source token ids (ESPnet's ``src_token_list`` + ``src_bpemodel``,
exported the same way).  ST/ASR teachers read what their frontend takes: a model with
``frontend: null`` (``input_size: 80``, trained on Kaldi fbank) reads kdst's features
from feats.scp, un-normalised (ESPnet's own ``normalize`` runs inside); a model with a
waveform frontend (``frontend: default``) needs raw audio, which only the Python API
(``encode`` on (B, samples)) feeds: kdst's data pipeline gives features, and says so.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from kdst.data.files import atomic_path, file_digest
from kdst.data.tokenizer import BLANK, BLANK_ID, SOS_EOS, SOS_EOS_ID, UNK, tokenizer_fingerprint
from kdst.errors import KdstError
from kdst.models.decoder import DecoderState
from kdst.models.encoder_decoder import decoder_io
from kdst.models.encoders import lengths_to_mask

TASKS = ("mt", "st", "asr")
MODEL_FILES = ("valid.acc.ave.pt", "valid.acc.ave.pth", "valid.acc.best.pth", "valid.loss.ave.pth")
PATH_KEYS = ("token_list", "bpemodel", "src_token_list", "src_bpemodel")


def import_espnet():
    """ESPnet's task classes, or a clear error when the extra is missing.

    ESPnet's imports print noise (nltk data downloads of g2p_en, a flash-attn notice) that
    has nothing to do with a teacher: it is swallowed here."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from espnet2.tasks.asr import ASRTask
            from espnet2.tasks.mt import MTTask
            from espnet2.tasks.st import STTask
    except ImportError:
        raise KdstError("ESPnet is not installed: pip install 'kdst[espnet]'") from None
    return {"mt": MTTask, "st": STTask, "asr": ASRTask}


# --- finding the files ----------------------------------------------------------------------

@dataclass(frozen=True)
class EspnetFiles:
    root: Path  # the exp dir, or the unpacked zip
    config_path: Path
    model_file: Path
    config: dict  # with the PATH_KEYS made absolute
    task: str


def _unpack(zip_path: Path) -> tuple[Path, dict]:
    """A packed model unpacked beside the zip (once) and its meta.yaml."""
    root = zip_path.with_suffix("")
    if not (root / "meta.yaml").is_file():
        try:
            with zipfile.ZipFile(zip_path) as z:
                tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
                z.extractall(tmp)
        except zipfile.BadZipFile:
            raise KdstError(f"{zip_path}: not a zip file") from None
        inner = [p for p in tmp.iterdir()]
        src = inner[0] if len(inner) == 1 and inner[0].is_dir() and not (tmp / "meta.yaml").is_file() else tmp
        if not (src / "meta.yaml").is_file():
            shutil.rmtree(tmp)
            raise KdstError(f"{zip_path}: no meta.yaml in the packed model")
        shutil.rmtree(root, ignore_errors=True)
        os.replace(src, root)
        shutil.rmtree(tmp, ignore_errors=True)
    return root, yaml.safe_load((root / "meta.yaml").read_text()) or {}


def _find(name: str, bases: list[Path], what: str, config_path: Path) -> Path:
    for base in bases:
        path = Path(name) if Path(name).is_absolute() else base / name
        if path.is_file():
            return path.resolve()
    raise KdstError(f"{config_path}: {what} '{name}' not found (looked in {', '.join(map(str, bases))})")


def resolve(path: str | os.PathLike, *, model_file: str | os.PathLike | None = None,
            task: str | None = None) -> EspnetFiles:
    """The config, model file and task of an ESPnet exp dir, packed zip or config.yaml."""
    path = Path(path)
    meta: dict = {}
    if path.suffix == ".zip" and path.is_file():
        root, meta = _unpack(path)
        yaml_files, files = meta.get("yaml_files", {}), meta.get("files", {})
        config_path = root / next((v for k, v in yaml_files.items() if k.endswith("train_config")), "config.yaml")
        model_file = model_file or next((root / v for k, v in files.items() if k.endswith("model_file")), None)
        task = task or next((k.split("_")[0] for k in yaml_files if k.split("_")[0] in TASKS), None)
    elif path.is_dir():
        root, config_path = path, path / "config.yaml"
    elif path.is_file():
        root, config_path = path.parent, path
    else:
        raise KdstError(f"{path}: no ESPnet model (an exp dir, a packed .zip or a config.yaml)")
    if not config_path.is_file():
        raise KdstError(f"{config_path}: ESPnet config missing")
    if model_file is None:
        found = [root / n for n in MODEL_FILES if (root / n).is_file()]
        found = found or sorted([*root.glob("*.pth"), *root.glob("*.pt")])
        if len(found) != 1 and not (found and found[0].name in MODEL_FILES):
            raise KdstError(f"{root}: {'no' if not found else 'several'} model files (*.pth, *.pt); name one")
        model_file = found[0]
    model_file = Path(model_file)
    if not model_file.is_file():
        raise KdstError(f"{model_file}: ESPnet model file not found")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    bases = [Path.cwd(), root, root.parent, root.parent.parent]  # the recipe dir sits above exp/<dir>
    for key in PATH_KEYS:
        if isinstance(config.get(key), str):
            config[key] = str(_find(config[key], bases, key, config_path))
    stats = (config.get("normalize_conf") or {}).get("stats_file")
    if stats:
        config["normalize_conf"] = {**config["normalize_conf"],
                                    "stats_file": str(_find(stats, bases, "normalize_conf.stats_file", config_path))}
    if task is None:  # MT embeds source tokens; ST also has a source vocabulary (its ASR side)
        task = "mt" if config.get("frontend") == "embed" else "st" if config.get("src_token_list") else "asr"
    if task not in TASKS:
        raise KdstError(f"{config_path}: unknown ESPnet task '{task}' ({', '.join(TASKS)})")
    return EspnetFiles(root, config_path, model_file, config, task)


# --- the vocabulary -------------------------------------------------------------------------

def espnet_token_list(config: dict, key: str, config_path: Path) -> list[str]:
    value = config.get(key)
    tokens = Path(value).read_text(encoding="utf-8").splitlines() if isinstance(value, str) else list(value or [])
    if len(tokens) < 4 or tokens[0] != BLANK or tokens[1] != UNK or tokens[-1] != SOS_EOS:
        raise KdstError(f"{value if isinstance(value, str) else config_path}: an ESPnet {key} must start with "
                        f"{BLANK}, {UNK} and end with {SOS_EOS}")
    return [t.strip() for t in tokens]


def kdst_order(espnet_tokens: list[str]) -> list[str]:
    """kdst ids: <blank> 0, <unk> 1, <sos/eos> 2, then ESPnet's ids 2..V-2 shifted by one."""
    return [BLANK, UNK, SOS_EOS, *espnet_tokens[2:-1]]


def to_espnet_ids(vocab_size: int) -> torch.Tensor:
    """``t[kdst_id] = espnet_id``; also the column order that turns ESPnet logits into kdst's."""
    ids = torch.arange(vocab_size) - 1
    ids[BLANK_ID], ids[1], ids[SOS_EOS_ID] = 0, 1, vocab_size - 1
    return ids


def export_tokenizer(files: EspnetFiles, out_dir: str | os.PathLike, side: str = "tgt") -> Path:
    """Write the teacher's target (``tgt``) or source (``src``, MT) vocabulary as a kdst tokenizer dir.
    Idempotent: an identical directory is left alone, so its fingerprint does not move."""
    prefix = "" if side == "tgt" else "src_"
    tokens = kdst_order(espnet_token_list(files.config, f"{prefix}token_list", files.config_path))
    token_type = files.config.get(f"{prefix}token_type", "bpe")
    if token_type not in ("bpe", "char", "word"):
        raise KdstError(f"{files.config_path}: {prefix}token_type '{token_type}' is not supported (bpe, char, word)")
    wanted = {"tokens.txt": "\n".join(tokens).encode() + b"\n",
              "tokenizer.yaml": yaml.safe_dump({"type": "espnet", "token_type": token_type,
                                                "vocab_size": len(tokens)}).encode()}
    if token_type == "bpe":
        bpe = files.config.get(f"{prefix}bpemodel")
        if not bpe:
            raise KdstError(f"{files.config_path}: token_type bpe but no {prefix}bpemodel")
        wanted["sp.model"] = Path(bpe).read_bytes()
    out = Path(out_dir)
    if out.is_dir() and all((out / n).is_file() and (out / n).read_bytes() == b for n, b in wanted.items()):
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name, data in wanted.items():  # each file whole or not at all: a stopped export is redone
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(data)
    return out


# --- the model ------------------------------------------------------------------------------

class EspnetStepDecoder(nn.Module):
    """Incremental decoding of an ESPnet ``TransformerDecoder`` with kdst's state protocol.

    ESPnet's ``forward_one_step`` recomputes every layer's keys/values over the whole prefix
    and the encoder output at each step; this computes the same function from the same
    modules with the keys/values cached (kdst.models.decoder.DecoderState: reorder_/select),
    in kdst's id order (embedding and output rows permuted once)."""

    def __init__(self, decoder: nn.Module, to_espnet: torch.Tensor, where: Path):
        super().__init__()
        from espnet.nets.pytorch_backend.transformer.decoder_layer import DecoderLayer
        from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

        embed = getattr(decoder, "embed", None)
        if (not isinstance(embed, nn.Sequential) or not isinstance(embed[0], nn.Embedding)
                or type(embed[1]) is not PositionalEncoding or decoder.output_layer is None):
            raise KdstError(f"{where}: only ESPnet Transformer decoders (input_layer: embed, sinusoidal positions, "
                            f"an output layer) can be a kdst teacher, not {type(decoder).__name__}")
        for layer in decoder.decoders:
            if type(layer) is not DecoderLayer or layer.concat_after or getattr(layer, "sequential_attn", None):
                raise KdstError(f"{where}: decoder layers with concat_after or sequential attention are not supported")
        self.espnet = decoder
        self.normalize_before = decoder.normalize_before
        self.embed_weight = nn.Parameter(embed[0].weight.detach()[to_espnet].clone(), requires_grad=False)
        self.out_weight = nn.Parameter(decoder.output_layer.weight.detach()[to_espnet].clone(), requires_grad=False)
        self.out_bias = nn.Parameter(decoder.output_layer.bias.detach()[to_espnet].clone(), requires_grad=False)
        self.positions = embed[1]
        self.heads = decoder.decoders[0].self_attn.h

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, D) -> (N, H, L, D/H)
        n, length, d = x.shape
        return x.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def init_state(self, memory: torch.Tensor, memory_mask: torch.Tensor, group: int = 1,
                   capacity: int = 64) -> DecoderState:
        n, d = memory.shape[0] * group, memory.shape[-1]
        cache = lambda: memory.new_empty(n, self.heads, max(1, capacity), d // self.heads)  # noqa: E731
        cross_kv = []
        for layer in self.espnet.decoders:
            attn = layer.src_attn
            k = attn.k_norm(self._split(attn.linear_k(memory)))
            v = self._split(attn.linear_v(memory))
            cross_kv.append((k.transpose(2, 3).contiguous().transpose(2, 3), v.contiguous()))
        layers = len(self.espnet.decoders)
        return DecoderState([cache() for _ in range(layers)], [cache() for _ in range(layers)], cross_kv,
                            memory_mask[:, None, None, :], group, 0)

    @staticmethod
    def _attend(attn, q, k, v, mask=None):
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(attn.d_k)  # as ESPnet scales
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        n, h, length, dk = out.shape
        return attn.linear_out(out.transpose(1, 2).reshape(n, length, h * dk))

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Logits (N, V), kdst order, for the next token after ``tokens`` (N,), kdst ids."""
        if state.length == state.self_k[0].shape[2]:
            state._grow()
        n, t, nb = tokens.shape[0], state.length, self.normalize_before
        self.positions.extend_pe(torch.empty(1, t + 1, dtype=self.embed_weight.dtype, device=tokens.device))
        x = (self.embed_weight[tokens] * self.positions.xscale + self.positions.pe[0, t])[:, None]
        for layer, cache_k, cache_v, (mem_k, mem_v) in zip(self.espnet.decoders, state.self_k, state.self_v,
                                                          state.cross_kv):
            attn = layer.self_attn
            h = layer.norm1(x) if nb else x
            cache_k[:, :, t:t + 1] = attn.k_norm(self._split(attn.linear_k(h)))
            cache_v[:, :, t:t + 1] = self._split(attn.linear_v(h))
            q = attn.q_norm(self._split(attn.linear_q(h)))
            x = x + self._attend(attn, q, cache_k[:, :, :t + 1], cache_v[:, :, :t + 1])
            if not nb:
                x = layer.norm1(x)
            # The beams of an utterance are one query sequence over its encoder output.
            attn = layer.src_attn
            h = (layer.norm2(x) if nb else x).view(n // state.group, state.group, -1)
            q = attn.q_norm(self._split(attn.linear_q(h)))
            x = x + self._attend(attn, q, mem_k, mem_v, state.memory_mask).view(n, 1, -1)
            if not nb:
                x = layer.norm2(x)
            x = x + layer.feed_forward(layer.norm3(x) if nb else x)
            if not nb:
                x = layer.norm3(x)
        y = self.espnet.after_norm(x[:, 0]) if nb else x[:, 0]
        state.length = t + 1
        return nn.functional.linear(y, self.out_weight, self.out_bias), state


class EspnetTeacher(nn.Module):
    """An ESPnet2 encoder-decoder behind kdst's teacher interface, in kdst ids."""

    def __init__(self, espnet_model: nn.Module, task: str, where: Path):
        super().__init__()
        self.espnet, self.task, self.where = espnet_model, task, where
        self.vocab_size = int(espnet_model.vocab_size)
        self.register_buffer("to_espnet", to_espnet_ids(self.vocab_size), persistent=False)
        src_vocab = int(getattr(espnet_model, "src_vocab_size", 0) or 0) if task == "mt" else 0
        self.register_buffer("src_to_espnet", to_espnet_ids(src_vocab) if src_vocab else torch.zeros(0, dtype=torch.long),
                             persistent=False)
        self.decoder = EspnetStepDecoder(espnet_model.decoder, self.to_espnet, where)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output (B, T', D) and lengths.  MT: kdst source ids (B, S); ST/ASR: features
        (B, T, F) for a model without a frontend, or waveforms (B, samples) for one with."""
        if self.task == "mt":
            pad = ~lengths_to_mask(src_lengths, src.shape[1])
            src = self.src_to_espnet[src].masked_fill(pad, -1)  # ESPnet pads token ids with -1
        elif getattr(self.espnet, "frontend", None) is not None and src.dim() == 3:
            raise KdstError(f"{self.where}: this ESPnet model computes its own features from raw audio "
                            f"(frontend: {type(self.espnet.frontend).__name__}); kdst feeds features, so only "
                            f"ESPnet ST/ASR teachers with frontend: null (input_size) are supported in recipes")
        out = self.espnet.encode(src, src_lengths)
        memory, lengths = out[0], out[1]
        if isinstance(memory, tuple):  # encoders with intermediate CTC outputs
            memory = memory[0]
        return memory, lengths

    def decoder_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits (B, U+1, V) in kdst order (ESPnet's own decoder forward), their targets,
        the encoder output and its lengths, as kdst's EncoderDecoder.decoder_logits."""
        memory, memory_lengths = self.encode(batch["src"], batch["src_lengths"])
        inputs, targets = decoder_io(batch["tgt"], batch["tgt_lengths"])
        logits, _ = self.espnet.decoder(memory, memory_lengths, self.to_espnet[inputs], batch["tgt_lengths"] + 1)
        return logits.index_select(-1, self.to_espnet), targets, memory, memory_lengths


def load_espnet_teacher(path: str | os.PathLike, device: str | torch.device = "cpu", *,
                        model_file: str | os.PathLike | None = None, task: str | None = None,
                        src_text: str = "text.en", text: str = "text",
                        tokenizer: str | os.PathLike | None = None) -> tuple[EspnetTeacher, dict]:
    """The teacher in eval mode and a kdst-style config: ``data`` names the kdst tokenizer dirs
    (exported into ``<model dir>/kdst_tokens/``), the input kind and the data dir's text files;
    ``checkpoint`` is the model file (teacher outputs record its digest).  ``tokenizer``: the
    student's target tokenizer, which must be the teacher's (clear error naming both)."""
    files = resolve(path, model_file=model_file, task=task)
    task_class = import_espnet()[files.task]
    with tempfile.TemporaryDirectory() as tmp:  # the config with its paths made absolute
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(files.config), encoding="utf-8")
        with contextlib.redirect_stdout(io.StringIO()):
            model, _ = task_class.build_model_from_file(config_path, files.model_file, str(device))
    teacher = EspnetTeacher(model, files.task, files.config_path).to(device).eval()
    tokens_dir = files.root / "kdst_tokens"
    data = {"tokenizer": str(export_tokenizer(files, tokens_dir / "tgt")), "text": text}
    if files.task == "mt":
        data.update(input="text", src_text=src_text, src_tokenizer=str(export_tokenizer(files, tokens_dir / "src", "src")))
    else:
        data["input"] = "speech"  # un-normalised features: ESPnet's normalize runs inside the model
    if tokenizer is not None:
        check_vocabulary(data["tokenizer"], tokenizer)
    config = {"data": data, "model": {"espnet": str(files.config_path), "task": files.task},
              "checkpoint": str(files.model_file)}
    return teacher, config


def check_vocabulary(teacher_tokenizer: str | os.PathLike, student_tokenizer: str | os.PathLike) -> None:
    if tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(student_tokenizer):
        raise KdstError(f"the ESPnet teacher's vocabulary {Path(teacher_tokenizer) / 'tokens.txt'} is not the "
                        f"student's {Path(student_tokenizer) / 'tokens.txt'}: the student must adopt the teacher's "
                        f"token list and BPE model (kdst espnet-tokenizer)")


def teacher_digest(config: dict) -> str:
    """What teacher outputs record for an ESPnet teacher: its model file's digest."""
    return file_digest(config["checkpoint"])


__all__ = ["EspnetTeacher", "check_vocabulary", "export_tokenizer", "import_espnet", "load_espnet_teacher",
           "resolve", "teacher_digest"]

