"""Without the ``kdst[espnet]`` extra the bridge says how to get it (this runs with or without ESPnet)."""

import sys

import pytest

from kdst.errors import KdstError
from kdst.models.espnet_bridge import import_espnet


def test_missing_espnet_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "espnet2.tasks.asr", None)  # makes the import fail
    with pytest.raises(KdstError, match=r"ESPnet is not installed: pip install 'kdst\[espnet\]'"):
        import_espnet()


def test_core_never_imports_espnet():
    import subprocess

    code = "import sys, kdst.cli, kdst.train.trainer, kdst.decode.decode, kdst.teacher.topk, kdst.models; " \
           "print(any(m.split('.')[0] in ('espnet', 'espnet2') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
