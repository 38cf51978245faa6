"""The stage runner: run a stage into its folder, or skip it when its recorded inputs and config still match.

Each stage owns ``RUN/<stage>/``. When it finishes, the runner writes ``stage.json`` there, atomically and
last: the sha256 of every input, the stage's slice of the config, and the sha256 of every file the stage
wrote. ``stage.json`` is the commit marker: a folder without one, or whose outputs no longer hash to what it
records, is not done, so a run killed mid-stage (or a file edited since) reruns that stage. Inputs are
content hashes, not paths or times, so a stage reruns only when what it reads really changed, and a stage
rerun that writes the same bytes leaves the stages after it skipped.

While a stage runs, ``.stage-pending.json`` holds its inputs and config. A rerun with the same ones is
told to ``resume`` (training continues from its last epoch, crafted patches are reused); otherwise the
folder is cleared first, so no stale output of another config survives into the new one.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io import sha256_file, versions, write_json

RECORD = "stage.json"
PENDING = ".stage-pending.json"
SCHEMA = 1


def canonical(obj):
    """``obj`` as it reads back from JSON, so a recorded config compares equal to a fresh one."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def output_files(folder: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote: relative path -> hash; the record and hidden scratch files excluded."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != RECORD and not any(p.startswith(".") for p in rel.parts):
            out[rel.as_posix()] = sha256_file(path)
    return out


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class StageContext:
    """What a stage body gets: its folder, and whether it may continue partial work left by a killed run."""

    name: str
    dir: Path
    resume: bool


@dataclass
class StageResult:
    name: str
    status: str  # "ran" or "skipped"
    dir: Path
    record: dict

    @property
    def outputs(self) -> dict[str, str]:
        return self.record["outputs"]

    def output_hashes(self, suffixes=None) -> dict[str, str]:
        """``{"<stage>/<file>": sha256}`` for outputs (ending in one of ``suffixes``): a later stage's inputs."""
        return {f"{self.name}/{rel}": h for rel, h in self.outputs.items()
                if suffixes is None or rel.endswith(tuple(suffixes))}


class StageRunner:
    """Runs stages under ``root``; ``force`` reruns every stage; ``log(line)`` hears what happens."""

    def __init__(self, root, force: bool = False, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.force = force
        self.log = log or (lambda line: None)
        self.results: dict[str, StageResult] = {}

    def up_to_date(self, folder: Path, inputs: dict, config: dict) -> dict | None:
        """The stage's record if it is done with exactly these inputs and config, else None."""
        record = _read(folder / RECORD)
        if not record or record.get("schema") != SCHEMA:
            return None
        if record.get("inputs") != canonical(inputs) or record.get("config") != canonical(config):
            return None
        outputs = record.get("outputs")
        if not isinstance(outputs, dict):
            return None
        for rel, digest in outputs.items():
            path = folder / rel
            if not path.is_file() or sha256_file(path) != digest:
                return None
        return record

    def run(self, name: str, inputs: dict, config: dict, body: Callable[[StageContext], None]) -> StageResult:
        """Skip ``name`` if up to date, else run ``body`` in its folder and record it."""
        folder = self.root / name
        record = None if self.force else self.up_to_date(folder, inputs, config)
        if record is not None:
            self.log(f"{name}: up to date, skipped")
            result = StageResult(name, "skipped", folder, record)
            self.results[name] = result
            return result
        pending = _read(folder / PENDING)
        resume = (not self.force and pending is not None and pending.get("inputs") == canonical(inputs)
                  and pending.get("config") == canonical(config))
        if resume:
            (folder / RECORD).unlink(missing_ok=True)
            self.log(f"{name}: resuming the interrupted run")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            self.log(f"{name}: running")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / PENDING, {"stage": name, "inputs": canonical(inputs), "config": canonical(config)})
        started = time.time()
        body(StageContext(name, folder, resume))
        record = {"schema": SCHEMA, "stage": name, "inputs": canonical(inputs), "config": canonical(config),
                  "outputs": output_files(folder), "started": started, "seconds": round(time.time() - started, 3),
                  "resumed": resume, "versions": versions()}
        write_json(folder / RECORD, record)
        (folder / PENDING).unlink(missing_ok=True)
        result = StageResult(name, "ran", folder, record)
        self.results[name] = result
        return result
