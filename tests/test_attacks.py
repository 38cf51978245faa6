"""Patch attacks on the tiny model with synthetic data: PatchAttack, A-QAPA, patch files, analyses, CLI."""
import itertools
import json

import numpy as np
import pytest
import qadtr
import torch
from qadtr.asr import apply_patch, disc_mask, random_locations, random_noise_patch
from qadtr.attacks import PatchAttack, QuantAwarePatchAttack, paste_patch, sampling_probabilities
from qadtr.attacks.analysis import TorchPredictor, gradient_alignment, score_patches, spatial_sensitivity
from qadtr.checkpoint import save_checkpoint
from qadtr.data.arrays import synthetic
from qadtr.data.loader import BatchLoader
from qadtr.errors import QadtrError
from qadtr.evaluate import accuracy
from qadtr.patchfile import load_patch, save_patch
from qadtr.transfer import to_float_nchw

BITS = (2, 4, 8, 32)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A tiny model trained for 120 steps on the synthetic set, cycling bit-widths; and its checkpoint."""
    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=BITS)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = itertools.cycle(BatchLoader(synthetic(512, seed=0), 64, shuffle=True))
    model.train()
    for step, (x, y) in zip(range(120), batches):
        qadtr.set_bits(model, (32, 8, 4, 2)[step % 4])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    qadtr.set_bits(model, 32)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"config": {"arch": "tiny", "model_bits": list(BITS), "num_classes": 10, "defense": "float"},
                           "trained_bits": list(BITS), "model": model.state_dict()})
    return model, path


@pytest.fixture(scope="session")
def synth():
    train, test = synthetic(512, seed=0), synthetic(256, seed=1)
    return train, to_float_nchw(test.x), test.y


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.5), ("sign", 0.5)])
@pytest.mark.parametrize("shape", ["square", "circle"])
def test_patch_stays_in_unit_range_with_the_documented_layout(trained_tiny, synth, optimizer, lr, shape):
    model, _ = trained_tiny
    attack = PatchAttack(bits=32, size=7, shape=shape, steps=6, lr=lr, optimizer=optimizer, batch_size=32,
                         rotation=30, scale=(0.7, 1.0))
    patch = attack.generate(model, synth[0])
    assert patch.dtype == np.float32 and patch.min() >= 0.0 and patch.max() <= 1.0
    if shape == "square":
        assert patch.shape == (3, 7, 7)
    else:
        assert patch.shape == (4, 7, 7) and np.array_equal(patch[3], disc_mask(7, 7))
    # The large step must actually have driven pixels onto both bounds, so the clamp is what held them.
    assert (patch[:3] == 0).any() and (patch[:3] == 1).any()


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_only_the_patch_region_changes(trained_tiny, synth, shape):
    model, _ = trained_tiny
    patch = PatchAttack(bits=32, size=6, shape=shape, steps=3, batch_size=16).generate(model, synth[0])
    images = synth[1][:40]
    loc = random_locations(len(images), (32, 32), (6, 6), seed=3)
    expected_region = np.zeros((len(images), 32, 32), bool)
    inside = disc_mask(6, 6).astype(bool) if shape == "circle" else np.ones((6, 6), bool)
    for i, (top, left) in enumerate(loc):
        expected_region[i, top:top + 6, left:left + 6] = inside
    for patched in (apply_patch(images, patch, loc),
                    paste_patch(torch.from_numpy(images), torch.from_numpy(patch[:3]), loc,
                                torch.from_numpy(patch[3]) if shape == "circle" else None).numpy()):
        changed = (patched != images).any(axis=1)
        assert not changed[~expected_region].any()
        assert np.array_equal(patched.transpose(0, 2, 3, 1)[expected_region],
                              np.broadcast_to(patch[:3].transpose(1, 2, 0), (len(images), 6, 6, 3))[
                                  np.broadcast_to(inside, (len(images), 6, 6))])


@pytest.mark.parametrize("attack_cls", [PatchAttack, QuantAwarePatchAttack])
def test_same_seed_gives_same_patch_and_placements(trained_tiny, synth, attack_cls):
    model, _ = trained_tiny
    kwargs = {"size": 5, "steps": 8, "batch_size": 32, "rotation": 10, "scale": (0.8, 1.0)}
    if attack_cls is QuantAwarePatchAttack:
        kwargs["bits"] = (32, 4, 2)
    first = attack_cls(seed=7, **kwargs).generate(model, synth[0])
    second = attack_cls(seed=7, **kwargs).generate(model, synth[0])
    other = attack_cls(seed=8, **kwargs).generate(model, synth[0])
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)
    assert np.array_equal(random_locations(100, (32, 32), (5, 5), 7), random_locations(100, (32, 32), (5, 5), 7))
    assert not np.array_equal(random_locations(100, (32, 32), (5, 5), 7), random_locations(100, (32, 32), (5, 5), 8))


@pytest.mark.parametrize("form", ["array_dataset", "numpy", "torch", "loader"])
def test_attack_accepts_every_data_form_and_gives_the_same_patch_for_the_same_images(trained_tiny, synth, form):
    model, _ = trained_tiny
    train = synth[0]
    data = {"array_dataset": (train, None),
            "numpy": (to_float_nchw(train.x), train.y),
            "torch": (torch.from_numpy(to_float_nchw(train.x)), torch.from_numpy(train.y)),
            "loader": (BatchLoader(train, 32, shuffle=True, seed=1), None)}[form]
    patch = PatchAttack(bits=32, size=5, steps=4, batch_size=32, seed=2).generate(model, *data)
    assert patch.shape == (3, 5, 5)
    if form != "loader":   # the loader orders batches itself; the other forms share the seeded order
        reference = PatchAttack(bits=32, size=5, steps=4, batch_size=32, seed=2).generate(model, train)
        assert np.array_equal(patch, reference)


def test_attack_restores_the_model_state(trained_tiny, synth):
    model, _ = trained_tiny
    qadtr.set_bits(model, 8)
    model.train()
    QuantAwarePatchAttack(bits=(32, 2), size=4, steps=3, batch_size=16).generate(model, synth[0])
    assert qadtr.get_bits(model) == (8, 8) and model.training
    assert all(p.requires_grad for p in model.parameters())
    qadtr.set_bits(model, 32)
    model.eval()


def test_optimized_patch_beats_the_random_noise_control(trained_tiny, synth):
    model, _ = trained_tiny
    train, images, labels = synth
    attack = PatchAttack(model, bits=32, size=14, steps=100, batch_size=64, lr=0.1, seed=0)
    patch = attack(torch.from_numpy(to_float_nchw(train.x)), torch.from_numpy(train.y))
    cell = score_patches(model, {"p": patch}, images, labels, [32], seed=1)["cells"][0]
    assert cell["patch_metrics"]["asr"] >= cell["control_metrics"]["asr"] + 0.2, cell
    first, last = np.mean([v for _, v in attack.losses[:10]]), np.mean([v for _, v in attack.losses[-10:]])
    assert last < first


def test_targeted_patch_pulls_held_out_images_towards_its_target(trained_tiny, synth):
    model, _ = trained_tiny
    train, images, labels = synth
    target = 3
    patch = PatchAttack(bits=32, size=14, steps=100, batch_size=64, lr=0.1, target=target).generate(model, train)
    cell = score_patches(model, {"p": patch}, images, labels, [32], targets={"p": target}, seed=1)["cells"][0]
    assert cell["patch_metrics"]["target_hit_rate"] >= cell["control_metrics"]["target_hit_rate"], cell
    # The toy model is so confident (target cross-entropy ~13 nats) that whether 100 steps push an image all
    # the way over the line depends on the CPU's float rounding in training; the target log-probability on
    # held-out images is what the targeted objective moves, so that is what is measured against the control.
    locations = random_locations(len(images), images.shape[2:], patch.shape[1:], seed=1)
    not_target = torch.from_numpy(labels != target)

    def mean_target_log_prob(p):
        with torch.no_grad():
            logits = model(torch.from_numpy(apply_patch(images, p, locations))).double()
        return float(torch.log_softmax(logits, 1)[not_target, target].mean())

    assert mean_target_log_prob(patch) >= mean_target_log_prob(random_noise_patch(patch, seed=1)) + 2.0


def test_sampling_rule_is_proportional_to_loss_with_a_uniform_floor():
    p = sampling_probabilities([3.0, 1.0, 0.0, 0.0], "proportional", floor=0.2)
    assert np.allclose(p, 0.8 * np.array([0.75, 0.25, 0, 0]) + 0.05)
    soft = sampling_probabilities([3.0, 1.0, 0.0, 0.0], "softmax", temperature=0.5, floor=0.0)
    assert soft.argmax() == 0 and np.isclose(soft.sum(), 1.0)
    assert np.allclose(sampling_probabilities([5.0, 0.1], "uniform"), 0.5)
    assert np.allclose(sampling_probabilities([0.0, 0.0], "proportional"), 0.5)


class _BlindAtTwoBits(torch.nn.Module):
    """At 32 bits a linear classifier on every pixel; at 2 bits a confident one on the corner pixel alone, which
    a 4x4 patch on an 8x8 image covers for 1 placement in 25: the patch is far weaker at 2 bits."""

    bit_choices = (2, 32)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * 8 * 8, 10)
        self.corner = torch.nn.Linear(3, 10)
        self.active_bits = (32, 32)

    def forward(self, x):
        return 20.0 * self.corner(x[:, :, 0, 0]) if self.active_bits[0] == 2 else self.fc(x.flatten(1))


@pytest.mark.parametrize("signal,sampling,temperature", [("survival", "softmax", 0.1), ("loss", "proportional", 1.0),
                                                          ("loss", "softmax", 1.0)])
def test_aqapa_spends_its_steps_on_the_weakest_bit_width(signal, sampling, temperature):
    model = _BlindAtTwoBits()
    images = torch.rand(4000, 3, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
        qadtr.set_bits(model, 2)
        agree = model(images).argmax(1) == labels
        qadtr.set_bits(model, 32)
    images, labels = images[agree], labels[agree]   # right at both bit-widths when clean
    attack = QuantAwarePatchAttack(model, bits=(32, 2), size=4, steps=60, batch_size=64, lr=0.2, signal=signal,
                                   sampling=sampling, temperature=temperature)
    attack(images, labels)
    assert attack.bit_counts[2] > 2 * attack.bit_counts[32], attack.bit_counts
    assert sum(attack.bit_counts.values()) == 60
    assert attack.weakness[1] > attack.weakness[0]
    assert attack.eligible_share.tolist() == [1.0, 1.0]
    uniform = QuantAwarePatchAttack(model, bits=(32, 2), size=4, steps=60, batch_size=64, sampling="uniform")
    uniform(images, labels)
    assert abs(uniform.bit_counts[2] - uniform.bit_counts[32]) < 25


def test_torch_predictor_agrees_with_evaluate_accuracy(trained_tiny, synth):
    model, _ = trained_tiny
    test = synthetic(256, seed=1)
    for b in (32, 2):
        with qadtr.bits(model, b):
            expected = accuracy(model, BatchLoader(test, 100))
        predicted = TorchPredictor(model, b)(to_float_nchw(test.x)).argmax(1)
        assert (predicted == test.y).mean() == pytest.approx(expected)
    with pytest.raises(QadtrError):
        TorchPredictor(qadtr.create_model("tiny", bits=(4, 32)), 2)


def test_gradient_alignment_is_a_symmetric_cosine_table(trained_tiny, synth):
    model, _ = trained_tiny
    result = gradient_alignment(model, synth[1][:48], synth[2][:48], (32, 8, 2), batch_size=20)
    cos = np.array(result["cosine"])
    assert result["bits"] == [32, 8, 2] and result["n"] == 48
    assert np.allclose(np.diag(cos), 1.0) and np.allclose(cos, cos.T)
    assert (cos <= 1.0 + 1e-9).all() and (cos[np.triu_indices(3, 1)] < 0.999).all()


def test_spatial_sensitivity_covers_the_grid(trained_tiny, synth):
    model, _ = trained_tiny
    patch = np.random.default_rng(0).random((3, 8, 8), dtype=np.float32)
    result = spatial_sensitivity(model, patch, synth[1][:30], synth[2][:30], bits=32, stride=8)
    assert result["tops"] == [0, 8, 16, 24] and result["lefts"] == [0, 8, 16, 24]
    assert np.array(result["asr"]).shape == (4, 4) and np.array(result["control_asr"]).shape == (4, 4)


def test_patch_files_round_trip_and_bad_files_are_refused(tmp_path):
    patch = np.concatenate([np.random.default_rng(0).random((3, 5, 5), dtype=np.float32), disc_mask(5, 5)[None]])
    paths = save_patch(tmp_path, patch, {"size": 5, "target": None}, name="p")
    loaded, meta = load_patch(paths["npy"])
    assert np.array_equal(loaded, patch) and meta["size"] == 5 and meta["shape_chw"] == [4, 5, 5]
    from PIL import Image

    assert Image.open(paths["png"]).size[0] >= 192
    bad = {
        "wrong_shape.npy": np.zeros((2, 5, 5), np.float32),
        "out_of_range.npy": np.full((3, 5, 5), 2.0, np.float32),
        "integers.npy": np.zeros((3, 5, 5), np.int64),
        "soft_mask.npy": np.concatenate([patch[:3], np.full((1, 5, 5), 0.5, np.float32)]),
    }
    for name, arr in bad.items():
        np.save(tmp_path / name, arr)
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in [*bad, "corrupt.npy", "pickled.npy", "p.png", "missing.npy"]:
        with pytest.raises(QadtrError):
            load_patch(tmp_path / name)


def _patch_file(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return path


def test_cli_attack_transfer_analyze_round_trip(run_cli, tmp_path, trained_tiny):
    _, ckpt = trained_tiny
    out = tmp_path / "attack"
    code, stdout, err = run_cli("attack", ckpt, "--dataset", "synthetic", "--bits", "8", "--size", "6", "--steps", "5",
                                "--batch-size", "32", "--eval-n", "100", "--out", out, "--seed", "3", "--quiet")
    assert code == 0, err
    assert "control ASR" in stdout
    meta = json.loads((out / "patch.json").read_text())
    for key in ("size", "area_percent", "shape", "source_checkpoint_sha256", "source_bits", "steps", "seed",
                "asr_on_source", "versions"):
        assert key in meta
    assert meta["size"] == 6 and meta["source_bits"] == [8] and meta["area_percent"] == pytest.approx(100 * 36 / 1024)
    cell = meta["asr_on_source"]["cells"][0]
    assert cell["target"] == "8" and "asr" in cell["patch_metrics"] and "asr" in cell["control_metrics"]
    patch, _ = load_patch(out / "patch.npy")
    assert patch.shape == (3, 6, 6) and (out / "patch.png").is_file()

    code, stdout, err = run_cli("attack", ckpt, "--dataset", "synthetic", "--quant-aware", "--source-bits", "32,2",
                                "--shape", "circle", "--size", "5", "--steps", "4", "--batch-size", "32", "--eval-n",
                                "60", "--out", out, "--name", "aqapa", "--quiet", "--json")
    assert code == 0, err
    aq = json.loads(stdout)
    assert aq["attack"] == "QuantAwarePatchAttack" and sum(aq["quant_aware"]["bit_counts"].values()) == 4
    assert {c["target"] for c in aq["asr_on_source"]["cells"]} == {"32", "2"}

    tout = tmp_path / "transfer"
    code, stdout, err = run_cli("transfer", ckpt, "--patches", out / "patch.npy", out / "aqapa.npy", "--target-bits",
                                "32,4,2", "--n", "80", "--dataset", "synthetic", "--out", tout, "--quiet")
    assert code == 0, err
    result = json.loads((tout / "transfer.json").read_text())
    assert len(result["cells"]) == 6 and set(result["clean_acc"]) == {"32", "4", "2"}
    assert result["patches"]["patch"]["sha256"] and result["n"] == 80
    assert "| patch |" in (tout / "transfer.md").read_text() and (tout / "transfer.png").stat().st_size > 0

    aout = tmp_path / "analyze"
    code, stdout, err = run_cli("analyze", ckpt, "--gradient-alignment", "--bits", "32,2", "--spatial", "--patch",
                                out / "patch.npy", "--stride", "13", "--sizes", "3,6", "--steps", "2", "--n", "40",
                                "--dataset", "synthetic", "--out", aout, "--quiet")
    assert code == 0, err
    result = json.loads((aout / "analyze.json").read_text())
    assert result["gradient_alignment"]["cosine"][0][0] == pytest.approx(1.0)
    assert set(result["spatial"]["maps"]) == {"32", "2"}
    assert [r["size"] for r in result["sizes"]["rows"]] == [3, 6]
    for png in ("gradient_alignment.png", "spatial_32.png", "spatial_2.png", "sizes.png"):
        assert (aout / png).is_file()


def _bad_cli_inputs(tmp_path, ckpt):
    good = _patch_file(tmp_path, "good.npy", np.full((3, 4, 4), 0.5, np.float32))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"not a numpy file at all")
    common = ("--dataset", "synthetic", "--out", tmp_path / "out")
    return {
        "size larger than image": ("attack", ckpt, "--size", "40", *common),
        "size 0": ("attack", ckpt, "--size", "0", *common),
        "bits not in checkpoint": ("attack", ckpt, "--bits", "3", *common),
        "missing checkpoint": ("attack", tmp_path / "none.pt", *common),
        "aqapa bits not in checkpoint": ("attack", ckpt, "--quant-aware", "--source-bits", "32,6", *common),
        "bad scale": ("attack", ckpt, "--scale", "1", *common),
        "target out of range": ("attack", ckpt, "--target", "10", *common),
        "wrong patch shape": ("transfer", ckpt, "--patches", _patch_file(tmp_path, "s.npy", np.zeros((5, 4, 4),
                                                                                                    np.float32)),
                              *common),
        "patch out of range": ("transfer", ckpt, "--patches", _patch_file(tmp_path, "r.npy", np.full((3, 4, 4), 1.5,
                                                                                                     np.float32)),
                               *common),
        "patch larger than image": ("transfer", ckpt, "--patches", _patch_file(tmp_path, "big.npy", np.zeros(
            (3, 40, 40), np.float32)), *common),
        "corrupt patch": ("transfer", ckpt, "--patches", corrupt, *common),
        "png instead of npy": ("transfer", ckpt, "--patches", tmp_path / "x.png", *common),
        "unknown target bits": ("transfer", ckpt, "--patches", good, "--target-bits", "32,9", *common),
        "target bits not in checkpoint": ("transfer", ckpt, "--patches", good, "--target-bits", "32,3", *common),
        "no patches": ("transfer", ckpt, *common),
        "analyze nothing": ("analyze", ckpt, *common),
        "spatial without patch": ("analyze", ckpt, "--spatial", *common),
        "sizes too large": ("analyze", ckpt, "--sizes", "4,33", *common),
        "unknown device": ("attack", ckpt, "--device", "toaster", *common),
    }


@pytest.mark.parametrize("case", [
    "size larger than image", "size 0", "bits not in checkpoint", "missing checkpoint", "aqapa bits not in checkpoint",
    "bad scale", "target out of range", "wrong patch shape", "patch out of range", "patch larger than image",
    "corrupt patch", "png instead of npy", "unknown target bits", "target bits not in checkpoint", "no patches",
    "analyze nothing", "spatial without patch", "sizes too large", "unknown device"])
def test_cli_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, trained_tiny, case):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    code, _, err = run_cli(*_bad_cli_inputs(tmp_path, trained_tiny[1])[case], "--quiet")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp_path / "out" / "patch.npy").exists()
