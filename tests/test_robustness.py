"""The robustness protocol (`qadtr robustness`, qadtr.attacks.protocol) on the tiny model with synthetic data."""
import itertools
import json
from pathlib import Path

import pytest
import qadtr
import torch
from qadtr.attacks.protocol import paper_plan, robustness, robustness_markdown
from qadtr.checkpoint import save_checkpoint
from qadtr.data.arrays import synthetic
from qadtr.data.loader import BatchLoader
from qadtr.errors import QadtrError
from qadtr.io import sha256_file
from qadtr.patchfile import load_patch

REPO = Path(__file__).resolve().parents[1]
BITS = (2, 4, 8, 32)
FAST = ("--dataset", "synthetic", "--steps", "2", "--batch-size", "32", "--train-n", "96", "--n", "60", "--quiet")
PAPER_PATCHES = {"seen_6x6_b32": ("seen", 6), "unseen_8x8_b4": ("unseen", 8), "unseen_10x10_b2": ("unseen", 10),
                 "adaptive_6x6_aqapa": ("adaptive", 6)}


def _trained_checkpoint(path, bits):
    """A tiny model trained briefly at each of ``bits`` in turn (so clean accuracy, hence ASR, is defined)."""
    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=bits)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = itertools.cycle(BatchLoader(synthetic(256, seed=0), 64, shuffle=True))
    model.train()
    for step, (x, y) in zip(range(40), batches):
        qadtr.set_bits(model, bits[step % len(bits)])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    qadtr.set_bits(model, 32)
    model.eval()
    save_checkpoint(path, {"config": {"arch": "tiny", "model_bits": list(bits), "num_classes": 10,
                                      "defense": "float"}, "trained_bits": list(bits), "model": model.state_dict()})
    return model, path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", BITS)


@pytest.fixture(scope="module")
def tiny_ckpt_without_4bit(tmp_path_factory):
    return _trained_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_no4.pt", (2, 8, 32))


def test_cli_robustness_writes_the_protocol_files_and_table(run_cli, tmp_path, tiny_ckpt):
    _, ckpt = tiny_ckpt
    out = tmp_path / "rob"
    code, stdout, err = run_cli("robustness", ckpt, "--bits", "32,8,4,2", "--seed", "3", "--out", out, *FAST)
    assert code == 0, err
    result = json.loads((out / "robustness.json").read_text())
    assert result["checkpoint_sha256"] == sha256_file(ckpt) and result["seed"] == 3
    assert result["train_data_sha256"] and result["test_data_sha256"] and result["versions"]["torch"]
    assert result["config"]["steps"] == 2 and result["config"]["n"] == 60 and result["skipped"] == []
    assert result["bits"] == [32, 8, 4, 2] and set(result["clean_acc"]) == {"32", "8", "4", "2"}
    # The full matrix: every patch at every target bit-width, each with its control.
    assert len(result["transfer"]["cells"]) == 4 * len(PAPER_PATCHES)
    assert [r["bits"] for r in result["table"]] == [32, 8, 4, 2]
    for row in result["table"]:
        assert row["clean_acc"] == result["clean_acc"][str(row["bits"])]
        assert set(row["asr"]) == set(PAPER_PATCHES)
        assert all({"asr", "control_asr"} <= set(cell) for cell in row["asr"].values())
    for name, (role, size) in PAPER_PATCHES.items():
        info = result["patches"][name]
        assert info["role"] == role and info["size"] == size
        patch, meta = load_patch(out / f"{name}.npy")
        assert patch.shape == (3, size, size) and meta["source_checkpoint_sha256"] == result["checkpoint_sha256"]
        asrs = [r["asr"][name]["asr"] for r in result["table"]]
        assert info["worst_case_asr"] == min(asrs) and info["max_asr"] == max(asrs)
    assert result["patches"]["seen_6x6_b32"]["source_bits"] == [32]
    assert result["patches"]["unseen_8x8_b4"]["source_bits"] == [4]
    assert result["patches"]["unseen_10x10_b2"]["source_bits"] == [2]
    # Adaptive: A-QAPA over every bit-width of the checkpoint, and it really spent its steps among them.
    adaptive = result["patches"]["adaptive_6x6_aqapa"]
    assert adaptive["source_bits"] == [32, 8, 4, 2] and adaptive["crafting"]["attack"] == "QuantAwarePatchAttack"
    assert sum(adaptive["crafting"]["bit_counts"].values()) == 2

    markdown = (out / "robustness.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| bits |"))
    for column in ("clean acc", "seen 6x6 @32", "unseen 8x8 @4", "unseen 10x10 @2", "adaptive 6x6 A-QAPA"):
        assert column in header
    assert all(f"| {b} |" in markdown for b in (32, 8, 4, 2)) and "(control)" in header
    assert "seen 6x6 @32" in stdout and "min over bits" in stdout and "wrote" in stdout

    # --resume reuses the patches crafted the same way, and only those: a new seed crafts afresh.
    code, stdout, err = run_cli("robustness", ckpt, "--bits", "32,2", "--seed", "3", "--out", out, "--resume",
                                "--json", *FAST)
    assert code == 0, err
    again = json.loads(stdout)
    assert set(again["clean_acc"]) == {"32", "2"}
    assert all(p["crafting"].get("reused") for p in again["patches"].values())
    code, stdout, err = run_cli("robustness", ckpt, "--bits", "32,2", "--seed", "4", "--out", out, "--resume",
                                "--json", *FAST)
    assert code == 0, err
    assert not any(p["crafting"].get("reused") for p in json.loads(stdout)["patches"].values())

def test_a_missing_source_bit_width_is_skipped_with_a_note(run_cli, tmp_path, tiny_ckpt_without_4bit):
    _, ckpt = tiny_ckpt_without_4bit
    out = tmp_path / "rob"
    code, stdout, err = run_cli("robustness", ckpt, "--bits", "32,8,2", "--out", out, *FAST)
    assert code == 0, err
    result = json.loads((out / "robustness.json").read_text())
    assert set(result["patches"]) == set(PAPER_PATCHES) - {"unseen_8x8_b4"}
    assert not (out / "unseen_8x8_b4.npy").exists()
    assert len(result["skipped"]) == 1 and "unseen 8x8 @4" in result["skipped"][0] and "4" in result["skipped"][0]
    assert result["patches"]["adaptive_6x6_aqapa"]["source_bits"] == [32, 8, 2]
    assert result["skipped"][0] in (out / "robustness.md").read_text()
    assert "note: unseen 8x8 @4 skipped" in stdout


def test_robustness_function_and_plan_options(tiny_ckpt):
    model, _ = tiny_ckpt
    train, test = synthetic(96, seed=0), synthetic(50, seed=1)
    result = robustness(model, train, test, bits=(32, 4), steps=1, batch_size=16, seed=1, unseen=[(4, 4)],
                        adaptive_bits=(32, 2))
    assert list(result["patches"]) == ["seen_6x6_b32", "unseen_4x4_b4", "adaptive_6x6_aqapa"]
    assert result["patches"]["adaptive_6x6_aqapa"]["source_bits"] == [32, 2]
    assert result["n"] == 50 and result["test_data_sha256"] == test.sha256()
    assert "| bits | clean acc |" in robustness_markdown(result)
    specs, skipped = paper_plan((2, 8, 32), seen_source=4, unseen=[])
    assert [s.role for s in specs] == ["adaptive"] and "seen 6x6 @4 skipped" in skipped[0]
    with pytest.raises(QadtrError, match="bit-width 6"):
        robustness(model, train, test, bits=(32, 6), steps=1)
    with pytest.raises(QadtrError, match="larger than"):
        robustness(model, train, test, bits=(32,), steps=1, seen_size=33)


@pytest.mark.parametrize("case,args", [
    ("missing checkpoint", ("--ckpt", "none.pt")),
    ("bits not in checkpoint", ("--bits", "32,3")),
    ("unsupported bits", ("--bits", "32,9")),
    ("seen size 0", ("--seen-size", "0")),
    ("adaptive size too large", ("--adaptive-size", "40")),
    ("unseen size too large", ("--unseen", "33:4")),
    ("bad unseen syntax", ("--unseen", "8-4")),
    ("adaptive bits not in checkpoint", ("--adaptive-bits", "32,6")),
    ("zero steps", ("--steps", "0")),
    ("zero images", ("--n", "0")),
])
def test_cli_robustness_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, tiny_ckpt, case, args):
    ckpt = tmp_path / args[1] if args[0] == "--ckpt" else tiny_ckpt[1]
    extra = () if args[0] == "--ckpt" else args
    code, _, err = run_cli("robustness", ckpt, "--out", tmp_path / "out", *FAST, *extra)  # extra wins
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "out").exists()


def test_patch_attack_benchmark_runs_on_the_shared_protocol_code(tmp_path, tiny_ckpt, load_benchmark, capsys):
    bench = load_benchmark("patch_attacks_cifar10")
    out = tmp_path / "bench"
    argv = [str(tiny_ckpt[1]), "--out", str(out), "--steps", "2", "--batch-size", "32", "--n", "40", "--n-align", "10",
            "--dataset", "synthetic"]
    bench.main(argv)
    result = json.loads((out / "results.json").read_text())
    assert set(result["worst_case_asr"]) == {s.name for s in bench.PLAN}
    assert len(result["transfer"]["cells"]) == len(bench.PLAN) * len(bench.BITS)
    assert "A-QAPA worst case" in (out / "results.md").read_text()
    bench.main(argv)        # resumable: every patch is found on disk and reused
    again = json.loads((out / "results.json").read_text())
    assert all(c.get("reused") for c in again["crafting"].values())
    assert again["worst_case_asr"] == result["worst_case_asr"]
    capsys.readouterr()


def test_robustness_is_a_listed_command_whose_every_option_has_help_and_a_default(run_cli):
    from qadtr.cli_attack import robustness_cmd

    code, out, _ = run_cli("--help")
    assert code == 0 and "robustness" in out
    for param in robustness_cmd.params:
        if param.param_type_name == "option" and param.name != "help":
            assert param.help, param.name
            assert param.is_flag or param.default is not None or param.name in ("out", "train_n", "data_dir"), \
                param.name
