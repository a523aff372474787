"""One kdst command as N jobs, each over one part of a split data dir.

The command's parsed options are written once, as JSON beside the job logs;
job ``i`` runs ``python -m kdst.cli split-job OPTIONS.json i``, which reads them
back, points ``data_dir`` at part ``i``, sets ``nj`` to 1, fills in the
per-job options (the job's own output) and runs the same command.  No argv is
rebuilt option by option: an option added to a command's parser reaches its
jobs as it is.

Every path option is written absolute: on a cluster, jobs may start in another
directory.  Options that hold paths as plain strings (a teacher reference) are
the command's to resolve before it calls :func:`run_split`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from kdst.data.files import atomic_write_text
from kdst.errors import KdstError
from kdst.launch.jobs import cpus

# Stands for the job number in the per-job options of run_split.
JOB = "{job}"
JOB_SUBCOMMAND = "split-job"


def options_path(log: Path) -> Path:
    """Where the options of the jobs logged as ``log`` (``x.JOB.log``) are written: ``x.options.json`` beside."""
    return log.with_name(log.name.replace(".JOB.log", "") + ".options.json")


def write_job_options(args: argparse.Namespace, path: Path, per_job: Mapping[str, str | Path]) -> None:
    """The options of ``args`` as JSON, paths made absolute; ``per_job``: options with :data:`JOB` in them."""
    options, paths = {}, set()
    for key, value in vars(args).items():
        if callable(value):  # a command function set by set_defaults: the job looks it up by name
            continue
        if isinstance(value, Path):
            value = str(value.resolve())
            paths.add(key)
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            value = [str(v.resolve()) for v in value]
            paths.add(key)
        options[key] = value
    paths.update(key for key, value in per_job.items() if isinstance(value, Path))
    spec = {"options": options, "per_job": {key: str(value) for key, value in per_job.items()},
            "paths": sorted(paths)}
    atomic_write_text(path, json.dumps(spec, indent=1) + "\n")


def read_job_options(path: Path, job: int) -> argparse.Namespace:
    """The options of job ``job`` from a file of :func:`write_job_options`; ``nj`` is 1."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
        options, per_job, paths = spec["options"], spec["per_job"], spec["paths"]
    except (OSError, ValueError, KeyError) as e:
        raise KdstError(f"cannot read job options {path}: {e}") from None
    options.update({key: value.replace(JOB, str(job)) for key, value in per_job.items()})
    for key in paths:
        value = options[key]
        if isinstance(value, list):
            options[key] = [Path(v) for v in value]
        elif value is not None:
            options[key] = Path(value)
    options["nj"] = 1  # a job runs its part itself
    return argparse.Namespace(**options)


def run_split(args: argparse.Namespace, data_dir: Path, nj: int, *, log: Path, cmd: str | None,
              per_job: Mapping[str, str | Path]) -> int:
    """Run the command of ``args`` as ``nj`` jobs over ``data_dir`` split in ``nj`` parts; the launcher's status.

    ``log`` has ``JOB`` in its name, as ``kdst launch`` wants; ``per_job`` gives
    the options that differ between jobs (their outputs), with :data:`JOB` where
    the job number goes.  The jobs go through the launcher command of cmd.sh
    (``cmd``), by default ``kdst launch`` on this machine.  The caller merges the
    jobs' outputs.
    """
    from kdst.data.kaldi_dir import split_data_dir

    parts = split_data_dir(data_dir, nj).resolve()
    options_file = options_path(Path(log)).resolve()
    options_file.parent.mkdir(parents=True, exist_ok=True)
    write_job_options(args, options_file, {"data_dir": parts / JOB, **per_job})
    job_argv = [sys.executable, "-m", "kdst.cli", JOB_SUBCOMMAND, str(options_file), "JOB"]
    launcher = shlex.split(cmd) if cmd else [sys.executable, "-m", "kdst.launch"]
    env = dict(os.environ)
    on_this_machine = cmd is None or (launcher[:2] == ["kdst", "launch"] and "--backend" not in launcher)
    if on_this_machine and "OMP_NUM_THREADS" not in env:
        # The jobs share this machine's cores; torch would give each of them all the cores.
        env["OMP_NUM_THREADS"] = str(max(1, cpus() // nj))
    try:
        return subprocess.call([*launcher, f"JOB=1:{nj}", str(log), *job_argv], env=env)
    except FileNotFoundError:
        raise KdstError(f"launcher not found: {launcher[0]} (from --cmd '{cmd}')") from None
