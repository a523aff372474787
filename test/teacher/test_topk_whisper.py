"""Word-level KD from a Whisper teacher: ``kdst topk --teacher hf:WHISPER --teacher-data-dir`` and a student
trained from the cache (kdst.teacher.topk, kdst.train.kd).

The teacher is a tiny random Whisper (test/hf_models.py: 1+2 layers, d_model 16, a 1 s window) saved with
save_pretrained; nothing is downloaded.  The oracle is transformers itself: the WhisperFeatureExtractor on the
raw audio and the model's forward with ``decoder_input_ids`` = the prompt (start, <|en|>, <|transcribe|>,
<|notimestamps|>, built here from the HF tokenizer) then the HF tokenizer's ids of " " + the student's text;
its logits at the last prompt token and at each text token are the distributions of the text tokens and of
<|endoftext|>, mapped to kdst ids by the documented order (start, no-timestamps, end-of-text, then every
other HF id in order).  Tolerances: indices exact; values (float16 logits minus the row maximum) to float16's
rounding, rtol 1e-3 plus atol 1e-4 for the float32 forward; the rest (log of the mass outside the k) 1e-4.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import soundfile
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install 'kdst[hf]')")

from helpers import tone  # noqa: E402
from hf_models import save_marian, save_whisper  # noqa: E402

from kdst.cli import main  # noqa: E402
from kdst.config import parse_config  # noqa: E402
from kdst.data.dataset import collate  # noqa: E402
from kdst.data.features import write_fbank_shard  # noqa: E402
from kdst.data.kaldi_dir import merge_into_data_dir, read_kv, write_data_dir, write_kv  # noqa: E402
from kdst.data.teacher_cache import TeacherCache  # noqa: E402
from kdst.data.tokenizer import train_tokenizer  # noqa: E402
from kdst.errors import KdstError  # noqa: E402
from kdst.models import build_model  # noqa: E402
from kdst.teacher.topk import write_cache  # noqa: E402
from kdst.train.kd import setup_distillation  # noqa: E402
from kdst.train.trainer import build_datasets, run  # noqa: E402

CPU = torch.device("cpu")
RATE = 16000
TEXTS = ["hello world this is a test", "the cat sat on the mat", "a big red dog runs home",
         "she sells sea shells", "Mr. Brown's car, the red one.", "a test of the red cat"]
LENGTHS = [4000, 6500, 9000, 11000, 13500, 16000]  # samples: up to the tiny model's 1 s window
EDITED = ("utt03", "she sells sea shells on the shore")  # the student's text, not the one hf-features copied
K = 5

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """A Whisper teacher; a data dir of tones with kdst fbank features (the student's) and its copy with the
    teacher's features (kdst hf-features); the teacher's exported tokenizer; a cache of k = 5 made by the CLI."""
    root = tmp_path_factory.mktemp("topk_whisper")
    whisper = save_whisper(root / "whisper", TEXTS)
    wav = root / "wav"
    wav.mkdir()
    files: dict[str, dict[str, str]] = {"wav.scp": {}, "utt2spk": {}, "text": {}}
    for i, n in enumerate(LENGTHS):
        utt = f"utt{i:02d}"
        soundfile.write(wav / f"{utt}.wav", tone(n / RATE, freq=150 + 330 * i, seed=i)[:n], RATE, subtype="FLOAT")
        files["wav.scp"][utt], files["utt2spk"][utt], files["text"][utt] = str(wav / f"{utt}.wav"), f"s{i}", TEXTS[i]
    data = root / "train"
    write_data_dir(data, files)
    merge_into_data_dir(data, [write_fbank_shard(data, root / "fbank", "raw")])
    teacher = f"hf:{whisper}"
    assert main(["hf-features", "--teacher", teacher, str(data), str(root / "train_whisper")]) == 0
    write_kv(data / "text", {**read_kv(data / "text"), EDITED[0]: EDITED[1]})
    assert main(["hf-tokenizer", "--teacher", teacher, "--out", str(root / "tokens_whisper")]) == 0
    cache = root / "topk"
    assert main(["topk", "--teacher", teacher, "--data-dir", str(data), "--teacher-data-dir",
                 str(root / "train_whisper"), "--out", str(cache), "--k", str(K), "--device", "cpu"]) == 0
    return {"root": root, "whisper": whisper, "teacher": teacher, "data": data, "features": root / "train_whisper",
            "tokens": root / "tokens_whisper", "cache": cache}


def hf_distributions(whisper, data, lang: str = "en") -> dict[str, torch.Tensor]:
    """utt -> Whisper's logits (U + 1, V) in kdst order at the student's target positions, from transformers."""
    hf_tok = transformers.AutoTokenizer.from_pretrained(whisper)
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(whisper)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper).eval()
    ids = hf_tok.convert_tokens_to_ids
    prompt = [ids("<|startoftranscript|>"), ids(f"<|{lang}|>"), ids("<|transcribe|>"), ids("<|notimestamps|>")]
    specials = [ids("<|startoftranscript|>"), ids("<|notimestamps|>"), hf_tok.eos_token_id]
    vocab = model.get_output_embeddings().weight.shape[0]
    order = torch.tensor(specials + [i for i in range(vocab) if i not in specials])
    texts, wavs = read_kv(data / "text"), read_kv(data / "wav.scp")
    out = {}
    for utt, text in texts.items():
        audio, rate = soundfile.read(wavs[utt], dtype="float32")
        assert rate == RATE
        features = extractor(audio, sampling_rate=RATE, return_tensors="pt").input_features
        core = hf_tok(" " + text, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = model(input_features=features, decoder_input_ids=torch.tensor([prompt + core])).logits[0]
        out[utt] = logits[len(prompt) - 1:][:, order]
        assert len(out[utt]) == len(core) + 1
    return out


def student_config(task: dict, tokens=None, kd: dict | None = None, train_dir=None, **train) -> dict:
    """A tiny attention encoder-decoder reading the 80 fbank bins, its vocabulary the teacher's exported one."""
    return {
        "data": {"train": str(train_dir or task["data"]), "valid": str(task["data"]), "text": "text",
                 "tokenizer": str(tokens or task["tokens"]), "max_units": 2000},
        "model": {"input_dim": 80, "d_model": 16, "ctc_weight": 0.0,
                  "encoder": {"type": "transformer", "layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.0,
                              "subsampling_channels": 4},
                  "decoder": {"layers": 1, "heads": 2, "ff_dim": 32, "dropout": 0.0}},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "schedule": "noam"},
        "train": {"epochs": 1, "seed": 3, "log_interval": 1, "bf16": False, "nan": "stop", **train},
        "kd": kd if kd is not None else {"cache": str(task["cache"]), "weight": 0.5},
    }


def setup(raw: dict):
    config = parse_config(raw)
    train_set, _, sizes = build_datasets(config.data)
    torch.manual_seed(0)
    student = build_model(replace(config.model, **sizes))
    return setup_distillation(config.kd, student, train_set, config.data, CPU)


# --- the cache is Whisper's own distribution ----------------------------------------------------------------

def test_cache_entries_are_the_top_k_of_whispers_forward(task):
    cache = TeacherCache(task["cache"])
    expected = hf_distributions(task["whisper"], task["data"])
    assert sorted(cache.ids) == sorted(expected) and cache.k == K and cache.mode == "topk"
    assert cache.vocab_size == next(iter(expected.values())).shape[1]
    for utt, logits in expected.items():
        indices, values = cache.get(utt)
        top = logits.topk(K, dim=-1)
        assert torch.equal(torch.from_numpy(indices), top.indices), utt
        torch.testing.assert_close(torch.from_numpy(values), top.values - top.values[:, :1], rtol=1e-3, atol=1e-4)
        p = torch.softmax(logits.double(), dim=-1)
        rest = torch.log1p(-p.gather(1, top.indices).sum(1))
        torch.testing.assert_close(torch.from_numpy(cache.get_rest(utt)).double(), rest, rtol=0, atol=1e-4)
    # the student's text, not the copy the teacher's data dir holds: the edited utterance has its own length
    hf_tok = transformers.AutoTokenizer.from_pretrained(task["whisper"])
    assert cache.num_tokens_of(EDITED[0]) == len(hf_tok(" " + EDITED[1], add_special_tokens=False).input_ids) + 1
    assert read_kv(task["features"] / "text")[EDITED[0]] != EDITED[1]


def test_fingerprint_covers_the_teacher_its_prompt_and_features(task, tmp_path):
    made = TeacherCache(task["cache"]).fingerprint
    digest = json.loads((task["features"] / "arks" / "whisper_train.hf.json").read_text())["extractor"]
    assert made["features"] == digest and made["source_text"] is None
    hf_tok = transformers.AutoTokenizer.from_pretrained(task["whisper"])
    en = [hf_tok.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                    "<|notimestamps|>")]
    assert made["prompt"] == en
    # lang=de: the same weights, another prompt, other distributions
    write_cache(f"{task['teacher']},lang=de", task["data"], tmp_path / "de", k=K, device="cpu",
                teacher_data_dir=task["features"])
    de = TeacherCache(tmp_path / "de")
    assert de.fingerprint["teacher"] == made["teacher"] and de.fingerprint["prompt"][1] != en[1]
    expected = hf_distributions(task["whisper"], task["data"], lang="de")
    indices, values = de.get("utt00")
    assert torch.equal(torch.from_numpy(indices), expected["utt00"].topk(K, dim=-1).indices)


@pytest.mark.slow  # two job processes, each importing torch and transformers: ~12 s on a shared 2-core CPU
def test_two_jobs_write_the_cache_one_job_wrote(task, tmp_path):
    assert main(["topk", "--teacher", task["teacher"], "--data-dir", str(task["data"]), "--teacher-data-dir",
                 str(task["features"]), "--out", str(tmp_path / "two"), "--k", str(K), "--device", "cpu",
                 "--nj", "2"]) == 0
    for name in ("index.tsv", "indices.bin", "values.bin", "rest.bin"):
        assert (tmp_path / "two" / name).read_bytes() == (task["cache"] / name).read_bytes(), name
    assert TeacherCache(tmp_path / "two").fingerprint == TeacherCache(task["cache"]).fingerprint


def test_sampled_mode_draws_k_tokens_per_position(task, tmp_path):
    write_cache(task["teacher"], task["data"], tmp_path / "s", k=7, mode="sampled", device="cpu",
                teacher_data_dir=task["features"])
    sampled = TeacherCache(tmp_path / "s")
    for utt in sampled.ids:
        _, counts = sampled.get(utt)
        assert (counts.sum(1) == 7).all() and len(counts) == TeacherCache(task["cache"]).num_tokens_of(utt)


# --- refusals at cache time -----------------------------------------------------------------------------------

def test_an_utterance_without_teacher_features_is_one_line_naming_the_dir(task, tmp_path, capsys):
    features = shutil.copytree(task["features"], tmp_path / "train_whisper")
    for name in ("feats.scp", "utt2num_frames"):
        write_kv(features / name, {u: v for u, v in read_kv(features / name).items() if u != "utt02"})
    capsys.readouterr()
    assert main(["topk", "--teacher", task["teacher"], "--data-dir", str(task["data"]), "--teacher-data-dir",
                 str(features), "--out", str(tmp_path / "cache"), "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and not (tmp_path / "cache").exists()
    assert error.startswith(f"kdst topk: error: {features}: no features for 1 of the 6 utterances of "
                            f"{task['data'] / 'text'}, e.g. 'utt02' (make them with kdst hf-features")


def test_features_of_other_audio_and_missing_options_are_refused(task, tmp_path):
    student = shutil.copytree(task["data"], tmp_path / "train")
    wavs = read_kv(student / "wav.scp")
    write_kv(student / "wav.scp", {**wavs, "utt01": wavs["utt04"], "utt04": wavs["utt01"]})
    with pytest.raises(KdstError, match=r"the features of 2 utterance\(s\) are of other audio than .*, e.g. 'utt01'"):
        write_cache(task["teacher"], student, tmp_path / "c", device="cpu", teacher_data_dir=task["features"])
    with pytest.raises(KdstError, match=r"reads its own log-mel features: give --teacher-data-dir"):
        write_cache(task["teacher"], task["data"], tmp_path / "c", device="cpu")
    with pytest.raises(KdstError, match="not Whisper features"):  # kdst fbank's features are not the teacher's
        write_cache(task["teacher"], task["data"], tmp_path / "c", device="cpu", teacher_data_dir=task["data"])
    marian = save_marian(tmp_path / "marian", TEXTS)
    write_kv(student / "text.en", read_kv(student / "text"))
    with pytest.raises(KdstError, match=r"--teacher-data-dir .* reads the transcript \(text.en\), not speech"):
        write_cache(f"hf:{marian}", student, tmp_path / "c", device="cpu", teacher_data_dir=task["features"])
    assert not (tmp_path / "c").exists()


def test_audio_sources_name_the_recording_and_the_segment(segmented_dir, tmp_path):
    from kdst.models.hf_whisper import audio_sources

    sources = audio_sources(segmented_dir)
    wavs, segments = read_kv(segmented_dir / "wav.scp"), read_kv(segmented_dir / "segments")
    assert sorted(sources) == sorted(segments)
    for utt, line in segments.items():
        rec, start, end = line.split()
        assert sources[utt] == f"{float(start)!r} {float(end)!r} {wavs[rec]}"
    # the same segment written another way is the same audio; another recording is not
    copy = shutil.copytree(segmented_dir, tmp_path / "copy")
    utt = sorted(segments)[0]
    rec, start, end = segments[utt].split()
    other = next(r for r in wavs if r != rec)
    write_kv(copy / "segments", {**segments, utt: f"{rec} {start}00 {end}"})
    assert audio_sources(copy) == sources
    write_kv(copy / "segments", {**segments, utt: f"{other} {start} {end}"})
    assert audio_sources(copy)[utt] != sources[utt]


# --- the student ----------------------------------------------------------------------------------------------

def test_student_adopting_the_tokenizer_trains_from_the_cache(task, tmp_path):
    loss_model, kd_set = setup(student_config(task))
    batch = collate([kd_set[u] for u in kd_set.ids])
    assert batch["teacher_topk_indices"].shape[:2] == (len(kd_set.ids), int(batch["tgt_lengths"].max()) + 1)
    loss_model.train()
    loss, stats = loss_model(batch)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    # the KD term by hand: sum over the k cached ids of p_T (log p_T - log p_S), p_T the softmax of the k cached
    # logits, log p_S the student's log-softmax over the whole vocabulary read at those ids (kdst.losses.word_kd)
    with torch.no_grad():
        logits, targets, *_ = loss_model.student.decoder_logits(batch)
        term = float(loss_model.kd_term(logits, targets, batch)[0])
    total, count = 0.0, 0
    for b, utt in enumerate(batch["ids"]):
        indices, values = TeacherCache(task["cache"]).get(utt)
        for j in range(len(indices)):
            p = torch.softmax(torch.from_numpy(values[j]).double(), 0)
            s = torch.log_softmax(logits[b, j].double(), 0)[torch.from_numpy(indices[j])]
            total += float((p * (p.log() - s)).sum())
            count += 1
    assert term == pytest.approx(total / count, rel=1e-4)
    loss.backward()
    grads = [p.grad for p in loss_model.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # and kdst train's loop: one optimiser step with a finite loss (nan: stop would end it otherwise)
    progress = run(parse_config(student_config(task, max_steps=1)), tmp_path / "exp")
    assert progress.step == 1 and (tmp_path / "exp" / "last.pt").is_file()


def test_a_student_with_another_vocabulary_is_refused_naming_both(task, tmp_path):
    train_tokenizer(tmp_path / "tok_char", [task["data"] / "text"], type="char")
    with pytest.raises(KdstError) as error:
        setup(student_config(task, tokens=tmp_path / "tok_char"))
    message = str(error.value)
    made = TeacherCache(task["cache"]).fingerprint["tokenizer_dir"]
    assert "\n" not in message and str(task["whisper"]) in made
    assert message == (f"{task['cache']}: made over the vocabulary of {made}, the student's data.tokenizer "
                       f"{tmp_path / 'tok_char'} is another: word-level KD needs one vocabulary (the student adopts "
                       "the teacher's: kdst hf-tokenizer, kdst espnet-tokenizer)")


def test_training_on_other_audio_than_the_teacher_heard_is_refused(task, tmp_path):
    train = shutil.copytree(task["data"], tmp_path / "train")
    wavs = read_kv(train / "wav.scp")
    write_kv(train / "wav.scp", {**wavs, "utt00": wavs["utt05"]})
    with pytest.raises(KdstError, match=r"does not match this training run: source \(the audio of .*/train, "
                                        r"wav.scp and segments, differs\)"):
        setup(student_config(task, train_dir=train))


def test_online_kd_from_whisper_is_refused_pointing_at_the_cache(task):
    with pytest.raises(KdstError, match=r"^kd.teacher hf:.*: a Whisper teacher distils through the top-k cache, "
                                        r"not online .*kdst topk --teacher hf:.* --teacher-data-dir"):
        setup(student_config(task, kd={"teacher": task["teacher"], "weight": 0.5}))


def test_kd_teacher_beside_the_cache_must_feed_the_prompt_it_was_made_with(task):
    # the weights are the same, so only the prompt tells lang=de from the cache's default lang=en
    setup(student_config(task, kd={"cache": str(task["cache"]), "teacher": task["teacher"], "weight": 0.5}))
    with pytest.raises(KdstError, match=r"does not match this training run: teacher's prompt \(made with the decoder "
                                        r"prompt \[.*\], hf:.*,lang=de feeds \[.*\]: another lang= or task=\)"):
        setup(student_config(task, kd={"cache": str(task["cache"]), "teacher": f"{task['teacher']},lang=de",
                                       "weight": 0.5}))
