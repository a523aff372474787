"""``kdst systems``: exp/systems.json, the manifest of the systems a recipe trained.

Each training stage of a recipe registers what it trained (``kdst systems add``): its
name, task, role, KD mode, architecture, seed and teacher.  The reports read these
labels here instead of taking the recipes' directory names apart, so a recipe may
name its systems as it likes.

    {"version": 1, "systems": [{"name": "st_word", "task": "st", "role": "student",
      "mode": "word", "arch": "st", "seed": 1, "teacher": "exp/mt_teacher/avg_best5.pt",
      "exp_dir": "exp/st_word", "model": "exp/st_word/avg_best5.pt", "init": null,
      "group": null, "baseline": false}, ...]}

``group`` names the system of which this is one training run: the runs of one system under
several seeds share it (and differ in ``seed``), and the reports give one row per group,
mean ± sd over its seeds.  Without it a system is a group of its own.  ``baseline`` marks
what the reports test the others against (``kdst results --baseline`` overrides it).

Systems keep the order of their first registration; registering a name again replaces
its entry in place (a stage that runs again).  Student jobs trained side by side register
at the same time, hence the lock file around each read-modify-write.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Iterator

from kdst.data.files import atomic_write_text
from kdst.errors import KdstError

MANIFEST = "systems.json"
VERSION = 1
TASKS = ("mt", "st", "asr", "rnnt")
# noisy-student: a student trained on its predecessor's pseudo labels, and the teacher of the next one
# pretrained: a model whose weights start other systems (the ST recipe's ASR encoder)
ROLES = ("teacher", "student", "noisy-student", "pretrained")
# The modes of students that learnt from the references alone (ST/RNN-T: none, ASR: gold): the
# baselines that KD is tested against when no --baseline or registered one says otherwise.
REFERENCE_MODES = ("none", "gold")


@dataclasses.dataclass
class System:
    name: str  # the directory under exp/ that holds it (decode_<set>/ ...)
    task: str  # one of TASKS
    role: str  # one of ROLES
    mode: str = "none"  # its KD mode in the recipe's spelling: word, seqkd+word, 1best, hard+soft ...
    arch: str = ""  # its architecture or size: st, small, streaming ...
    seed: int | None = None
    teacher: str | None = None  # the teacher reference it learnt from: a checkpoint or espnet:PATH
    exp_dir: str = ""
    model: str | None = None  # what decoding loads: a checkpoint, or espnet:PATH for an ESPnet teacher
    init: str | None = None  # the checkpoint a fine-tuned system started from
    group: str | None = None  # the system this is one seed's run of (None: a group of its own)
    baseline: bool = False  # what the reports compare the others with

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise KdstError(f"system name '{self.name}': a directory name under exp/, not a path")
        if self.task not in TASKS:
            raise KdstError(f"system {self.name}: task '{self.task}' is none of {', '.join(TASKS)}")
        if self.role not in ROLES:
            raise KdstError(f"system {self.name}: role '{self.role}' is none of {', '.join(ROLES)}")
        if self.group is not None and (not self.group or "/" in self.group):
            raise KdstError(f"system {self.name}: group '{self.group}': a system name, not empty nor a path")

    @property
    def group_name(self) -> str:
        return self.group or self.name


def manifest_path(exp_root: str | Path) -> Path:
    return Path(exp_root) / MANIFEST


def read_systems(exp_root: str | Path) -> list[System]:
    """The registered systems in registration order; [] when nothing was registered."""
    path = manifest_path(exp_root)
    if not path.is_file():
        return []
    try:
        content = json.loads(path.read_text())
        return [System(**entry) for entry in content["systems"]]
    except (ValueError, KeyError, TypeError) as e:
        raise KdstError(f"{path}: not a systems manifest ({e}); remove it and rerun the training stages "
                        "to register the systems again") from None


@contextlib.contextmanager
def _locked(exp_root: Path) -> Iterator[None]:
    exp_root.mkdir(parents=True, exist_ok=True)
    with open(exp_root / f".{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def register(exp_root: str | Path, system: System) -> list[System]:
    """Add ``system`` to the manifest, or replace the entry of that name; returns the new list."""
    exp_root = Path(exp_root)
    with _locked(exp_root):
        systems = read_systems(exp_root)
        names = [s.name for s in systems]
        if system.name in names:
            systems[names.index(system.name)] = system
        else:
            systems.append(system)
        content = {"version": VERSION, "systems": [dataclasses.asdict(s) for s in systems]}
        atomic_write_text(manifest_path(exp_root), json.dumps(content, indent=1) + "\n")
    return systems


def select(systems: list[System], *, task: str | None = None, role: str | None = None) -> list[System]:
    return [s for s in systems if (task is None or s.task == task) and (role is None or s.role == role)]


def by_name(systems: list[System]) -> dict[str, System]:
    return {s.name: s for s in systems}


def find(systems: list[System], name: str, exp_root: str | Path) -> System:
    """The entry of ``name``; KdstError naming the manifest when there is none."""
    found = by_name(systems).get(name)
    if found is None:
        raise KdstError(f"{manifest_path(exp_root)}: no system {name} (its training stage registers it: "
                        f"run that stage, or kdst systems add --name {name} ...)")
    return found


def seed_of(exp_dir: Path) -> int | None:
    """train.seed of the config kdst train wrote into ``exp_dir`` (the trainer's default, 1, if unset)."""
    config = exp_dir / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    train = (yaml.safe_load(config.read_text()) or {}).get("train") or {}
    return int(train.get("seed", 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register a trained system (again: replace its entry)")
    add.add_argument("--name", required=True, help="its directory under --exp-dir")
    add.add_argument("--task", required=True, choices=TASKS)
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--mode", default="none", help="KD mode, as the recipe spells it")
    add.add_argument("--arch", default="", help="architecture or size label")
    add.add_argument("--seed", type=int, help="default: train.seed of its config.yaml, if it has one")
    add.add_argument("--teacher", help="the teacher reference it learnt from (a checkpoint, espnet:PATH)")
    add.add_argument("--dir", dest="system_dir", help="its experiment dir (default: EXP_DIR/NAME)")
    add.add_argument("--model", help="what decoding loads (a checkpoint, espnet:PATH)")
    add.add_argument("--init", help="the checkpoint it was fine-tuned from")
    add.add_argument("--group", help="the system of which this is one seed's run (the reports average the "
                                     "runs of a group; default: its own name)")
    add.add_argument("--baseline", action="store_true",
                     help="what the reports test the other systems against")
    listing = actions.add_parser("list", help="the registered systems, one a line")
    listing.add_argument("--task", choices=TASKS)
    listing.add_argument("--role", choices=ROLES)
    listing.add_argument("--names", action="store_true", help="names only, space-separated on one line")
    for p in (add, listing):
        p.add_argument("--exp-dir", type=Path, default=Path("exp"), help=f"where {MANIFEST} is")


def run(args: argparse.Namespace) -> int:
    if args.action == "add":
        system_dir = Path(args.system_dir) if args.system_dir else args.exp_dir / args.name
        seed = args.seed if args.seed is not None else seed_of(system_dir)
        system = System(name=args.name, task=args.task, role=args.role, mode=args.mode, arch=args.arch,
                        seed=seed, teacher=args.teacher or None, exp_dir=str(system_dir),
                        model=args.model or None, init=args.init or None, group=args.group or None,
                        baseline=args.baseline)
        register(args.exp_dir, system)
        return 0
    systems = select(read_systems(args.exp_dir), task=args.task, role=args.role)
    if args.names:
        print(" ".join(s.name for s in systems))
    else:
        for s in systems:
            print(json.dumps(dataclasses.asdict(s)))
    return 0
