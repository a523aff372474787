"""Without the ``kdst[hf]`` extra the bridge says how to get it (this runs with or without transformers)."""

import subprocess
import sys

import pytest

from kdst.errors import KdstError
from kdst.models.hf_bridge import import_transformers
from kdst.models.teacher import load_teacher


def test_missing_transformers_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(KdstError, match=r"^Hugging Face transformers is not installed: pip install 'kdst\[hf\]'$"):
        import_transformers()
    (tmp_path / "config.json").write_text('{"model_type": "marian"}')
    with pytest.raises(KdstError, match=r"pip install 'kdst\[hf\]'"):
        load_teacher(f"hf:{tmp_path}")


def test_only_the_bridge_imports_transformers():
    code = ("import sys, kdst.cli, kdst.train.trainer, kdst.decode.decode, kdst.teacher.topk, kdst.models, "
            "kdst.models.hf_bridge, kdst.data.tokenizer; "
            "print(any(m.split('.')[0] in ('transformers', 'tokenizers') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
