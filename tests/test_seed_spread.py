"""benchmarks/seed_spread.py: mean, spread and range of the defense table over seeds."""
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("seed_spread")


def _run(folder: Path, seed: int, clean2: float, unseen2: float | None) -> Path:
    asr = {"seen_6x6_b32": {"asr": 0.2, "control_asr": 0.05}}
    if unseen2 is not None:
        asr["unseen_10x10_b2"] = {"asr": unseen2, "control_asr": 0.1}
    table = [{"bits": 2, "clean_acc": clean2, "asr": asr},
             {"bits": 32, "clean_acc": 0.9, "asr": {"seen_6x6_b32": {"asr": None, "control_asr": None}}}]
    folder.mkdir(parents=True)
    (folder / "reproduce.json").write_text(json.dumps({"seed": seed, "evals": {"qadtr": {"table": table}}}))
    return folder


def test_spread_states_mean_std_and_range_per_cell_over_the_seeds_that_have_it(tmp_path, bench):
    runs = [_run(tmp_path / "s0", 0, 0.70, 0.30), _run(tmp_path / "s1", 1, 0.72, 0.20),
            _run(tmp_path / "s2", 2, 0.74, None)]
    bench.main([*map(str, runs), "--out", str(tmp_path / "out")])
    table = json.loads((tmp_path / "out" / "seed_spread.json").read_text())["spread"]["qadtr"]
    clean = table["2"]["clean"]
    assert clean["mean"] == pytest.approx(0.72) and clean["std"] == pytest.approx(0.02)
    assert (clean["min"], clean["max"], clean["n"], clean["seeds"]) == (0.70, 0.74, 3, [0, 1, 2])
    unseen = table["2"]["unseen_10"]
    assert unseen["n"] == 2 and unseen["mean"] == pytest.approx(0.25) and unseen["seeds"] == [0, 1]
    assert "seen" not in table["32"]  # a cell with no ASR (None) is not averaged as zero
    md = (tmp_path / "out" / "seed_spread.md").read_text()
    assert "72.0 ± 2.0 (70.0..74.0)" in md


def test_a_repeated_seed_or_a_missing_run_is_refused(tmp_path, bench):
    a, b = _run(tmp_path / "a", 0, 0.7, 0.3), _run(tmp_path / "b", 0, 0.7, 0.3)
    with pytest.raises(SystemExit, match="repeat a seed"):
        bench.main([str(a), str(b), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="no reproduce.json"):
        bench.main([str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
