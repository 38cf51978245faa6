"""Defense training (pbat, dwq, qadtr) on the tiny model with synthetic data: steps, DBWT, GIR, pool, resume."""
from collections import Counter
from dataclasses import asdict, fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from qadtr import create_model, set_bits
from qadtr.checkpoint import load_checkpoint, save_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.defenses import DEFENSES, DefenseParams, build_defense
from qadtr.defenses.dbwt import BitWidthSchedule
from qadtr.defenses.gir import GradientNoise, gir_penalty, gradient_cosine_penalty, input_gradients
from qadtr.defenses.patch_pool import PatchPool
from qadtr.defenses.patching import patch_loss, random_locations, signed_patch_steps
from qadtr.train import TrainConfig, param_groups, train

# Small and fast: 2 batches of 32 per epoch, 32 test images.
FAST = {"arch": "tiny", "dataset": "synthetic", "batch_size": 32, "train_subset": 64, "eval_subset": 32, "seed": 5}


@pytest.fixture(scope="module")
def batches():
    data = load_dataset("synthetic", "train", seed=0).subset(64, 0)
    return list(BatchLoader(data, 32, shuffle=True, augment=True, seed=0))


def _steps(defense_name, batches, **overrides):
    """Run two training steps; return (model before, model after, losses)."""
    cfg = TrainConfig(**{**FAST, "defense": defense_name, **overrides}).resolved()
    torch.manual_seed(0)
    model = create_model("tiny", bits=cfg.model_bits)
    model.train()
    criterion = torch.nn.CrossEntropyLoss()
    defense = build_defense(cfg, model, criterion)
    defense.start_epoch(0)
    # One untimed forward per bit-width, so every threshold is initialised before the snapshot.
    with torch.no_grad():
        for b in cfg.model_bits:
            set_bits(model, b)
            model(batches[0][0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(param_groups(model, 0.0), lr=0.05, momentum=0.9)
    losses = []
    for i, (x, y) in enumerate(batches):
        loss, logits, bits = defense.step(x, y, i)
        assert bits in cfg.bits and logits.shape == (len(y), 10)
        optimizer.zero_grad()
        loss.backward()
        defense.before_optimizer_step(i)
        optimizer.step()
        losses.append(loss.item())
    return before, model.state_dict(), losses, defense


@pytest.mark.parametrize("name", DEFENSES)
def test_each_defense_trains_with_finite_loss_and_changes_weights(name, batches):
    before, after, losses, _ = _steps(name, batches)
    assert all(np.isfinite(losses))
    changed = [k for k in before if k.endswith("conv.weight") and not torch.equal(before[k], after[k])]
    assert changed, f"{name}: no conv weight moved"


def test_default_bit_sets_per_defense():
    resolved = {d: TrainConfig(defense=d).resolved().bits for d in DEFENSES}
    assert resolved == {"float": [32], "qat": [4], "pbat": [32], "dwq": [32, 8, 4, 2], "qadtr": [32, 8, 4, 2]}


@pytest.mark.parametrize("mode", ["random", "cyclic"])
def test_dbwt_visits_every_bit_width(mode):
    schedule = BitWidthSchedule([32, 8, 4, 2], mode)
    g = torch.Generator().manual_seed(0)
    counts = Counter(schedule.draw(step, g) for step in range(200))
    assert set(counts) == {32, 8, 4, 2}
    if mode == "cyclic":
        assert set(counts.values()) == {50}
        assert [schedule.draw(s, g) for s in range(5)] == [32, 8, 4, 2, 32]
    else:
        assert min(counts.values()) > 25  # uniform: 50 expected each


@pytest.mark.parametrize("mode", ["random", "cyclic"])
@pytest.mark.parametrize("defense,extra", [
    ("qadtr", {"gir_lambda": 0.0, "pool_steps": 0, "fresh_steps": 0}),
    ("qat", {}),  # switchable plain QAT: DBWT without patches or GIR
])
def test_training_metrics_log_visits_per_bit_width(tmp_path, mode, defense, extra):
    cfg = TrainConfig(**{**FAST, "train_subset": 256}, defense=defense, bit_schedule=mode, epochs=1,
                      bits=[8, 4, 2], **extra)
    visits = train(cfg, tmp_path, quiet=True)["epochs"][0]["bits_visits"]
    assert set(visits) == {"8", "4", "2"} and sum(visits.values()) == 8
    assert min(visits.values()) >= (2 if mode == "cyclic" else 1)


def test_single_bit_qat_trains_only_its_bit_width():
    cfg = TrainConfig(**FAST, defense="qat", bits=[4]).resolved()
    defense = build_defense(cfg, create_model("tiny", bits=cfg.model_bits), torch.nn.CrossEntropyLoss())
    defense.start_epoch(0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    assert {defense.step(x, y, i).bits for i in range(6)} == {4}


def test_gir_penalty_is_the_mean_squared_cosine_by_hand():
    grad_a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    grad_b = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    # cos = 1/sqrt(2) and 0 -> squares 0.5 and 0 -> mean 0.25
    assert gradient_cosine_penalty(grad_a, grad_b).item() == pytest.approx(0.25)


def test_gir_penalty_on_the_model_matches_numpy_and_reaches_the_weights(tiny_model):
    torch.manual_seed(1)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    penalty = gir_penalty(tiny_model, x, y, 4, 2)
    ga = input_gradients(tiny_model, x, y, 4, create_graph=False).flatten(1).numpy()
    gb = input_gradients(tiny_model, x, y, 2, create_graph=False).flatten(1).numpy()
    cos = (ga * gb).sum(1) / (np.linalg.norm(ga, axis=1) * np.linalg.norm(gb, axis=1))
    assert penalty.item() == pytest.approx(float((cos ** 2).mean()), rel=1e-4)
    assert 0 < penalty.item() < 1
    tiny_model.zero_grad()
    penalty.backward()  # double backprop through the brevitas quantizers
    conv_grads = [p.grad for n, p in tiny_model.named_parameters() if n.endswith("conv.weight")]
    assert conv_grads and all(g is not None and g.abs().sum() > 0 for g in conv_grads)


def test_gir_uses_batch_statistics_and_leaves_the_running_ones(tiny_model):
    """Stale running statistics must not change GIR: through them the optimizer could lower the cosine by
    breaking the eval-mode network instead of shaping it (docs/results.md 6d). Nor may GIR move them."""
    torch.manual_seed(4)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    tiny_model.eval()
    gir_penalty(tiny_model, x, y, 4, 2)  # initialise both bit-widths' thresholds
    running = {k: v.clone() for k, v in tiny_model.state_dict().items() if "running_" in k}
    fresh = gir_penalty(tiny_model, x, y, 4, 2).item()
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in running.items())
    assert not tiny_model.training  # the caller's mode comes back
    bns = [m for m in tiny_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.1 for bn in bns)
    for bn in bns:  # statistics that lag the weights, as mid-training
        bn.running_mean.add_(0.5)
        bn.running_var.mul_(3.0)
    assert gir_penalty(tiny_model, x, y, 4, 2).item() == pytest.approx(fresh, rel=1e-5)


def test_gir_lowers_the_cross_bit_gradient_cosine(tiny_model):
    """Same start, same batches: training with GIR ends with less aligned 4-bit/2-bit input gradients."""
    torch.manual_seed(2)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    gir_penalty(tiny_model, x, y, 4, 2)  # initialise both bit-widths' thresholds before copying
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    final = {}
    for lam in (0.0, 20.0):
        tiny_model.load_state_dict(start)
        opt = torch.optim.SGD(tiny_model.parameters(), lr=0.05)
        for step in range(8):
            bits = (4, 2)[step % 2]
            set_bits(tiny_model, bits)
            tiny_model.train()
            loss = F.cross_entropy(tiny_model(x), y) + lam * gir_penalty(tiny_model, x, y, 4, 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[lam] = gir_penalty(tiny_model, x, y, 4, 2).item()
    assert final[20.0] < 0.5 * final[0.0], final


def test_signed_patch_steps_raise_the_loss_and_stay_in_range(tiny_model):
    torch.manual_seed(3)
    tiny_model.eval()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    g = torch.Generator().manual_seed(0)
    loc = random_locations(8, (32, 32), 8, g)
    start = torch.rand(8, 3, 8, 8, generator=g)
    crafted = signed_patch_steps(tiny_model, x, y, start, loc, steps=5, step_size=16 / 255)
    assert crafted.min() >= 0 and crafted.max() <= 1
    with torch.no_grad():
        assert patch_loss(tiny_model, x, y, crafted, loc) > patch_loss(tiny_model, x, y, start, loc)


def test_pool_refresh_moves_only_drawn_patches_and_stays_in_range(tiny_model):
    torch.manual_seed(4)
    tiny_model.eval()
    set_bits(tiny_model, 2)
    pool = PatchPool([2], pool_size=4, patch_size=8, seed=0)
    before = pool.patches[2].clone()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 0, 1, 1, 0, 1])
    loc = random_locations(6, (32, 32), 6, g)
    pool.refresh(tiny_model, x, y, loc, 2, index, 6, steps=3, step_size=0.5)
    after = pool.patches[2]
    assert after.min() >= 0 and after.max() <= 1
    assert not torch.equal(after[:2], before[:2]) and torch.equal(after[2:], before[2:])


@pytest.mark.parametrize("source, pools, moved", [("quantized", {"pool_4", "pool_2"}, {"pool_4"}),
                                                   ("float", {"pool_32"}, {"pool_32"})])
def test_qadtr_crafts_at_the_batch_bit_width_or_at_float_for_the_ablation(batches, source, pools, moved):
    cfg = TrainConfig(**FAST, defense="qadtr", bits=[4, 2], bit_schedule="cyclic", patch_source=source,
                      gir_lambda=0.0).resolved()
    defense = build_defense(cfg, create_model("tiny", bits=cfg.model_bits), torch.nn.CrossEntropyLoss())
    defense.start_epoch(0)
    before = defense.state_dict()
    assert defense.step(*batches[0], 0).bits == 4  # cyclic over [4, 2] starts at 4
    after = defense.state_dict()
    assert set(before) == pools
    assert {k for k in before if not torch.equal(before[k], after[k])} == moved


@pytest.mark.parametrize("bits, gir_lambda, gir_only", [([4], 0.5, [32]), ([32, 4], 0.5, []), ([4], 0.0, [])])
def test_qadtr_names_the_widths_that_only_gir_trains(tmp_path, capsys, bits, gir_lambda, gir_only):
    cfg = TrainConfig(**FAST, defense="qadtr", bits=bits, gir_lambda=gir_lambda, gir_samples=8, epochs=1)
    record = train(cfg, tmp_path, quiet=True)
    assert record["defense"]["gir_only_bits"] == gir_only
    warned = [line for line in capsys.readouterr().err.splitlines() if "cross-entropy never trains" in line]
    assert [int(line.split("never trains ")[1].split("-bit")[0]) for line in warned] == gir_only


def _interrupt_after_first_epoch(monkeypatch):
    """Make a run die right after its first checkpoint is written (what SIGKILL mid-epoch 2 leaves)."""
    import qadtr.train as train_module

    def die(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_json", die)
    return lambda: monkeypatch.undo()


def test_qadtr_resume_equals_an_uninterrupted_run_pool_included(tmp_path, monkeypatch):
    cfg = TrainConfig(**FAST, defense="qadtr", epochs=2, bits=[4, 2], gir_samples=8, pool_size=3)
    train(cfg, tmp_path / "straight", quiet=True)
    restore = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", quiet=True)
    restore()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 1
    train(cfg, tmp_path / "killed", resume=True, quiet=True)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("straight", "killed"))
    assert b["epoch"] == 2
    assert set(a["defense_state"]) == {"pool_4", "pool_2"} and a["defense_state"]["pool_4"].shape == (3, 3, 8, 8)
    for key, pool in a["defense_state"].items():
        assert pool.min() >= 0 and pool.max() <= 1
        assert torch.equal(pool, b["defense_state"][key]), key
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_a_checkpoint_without_defense_fields_still_resumes(tmp_path, monkeypatch):
    """Checkpoints from before the defenses (no defense hyperparameters in their config) load and resume."""
    cfg = TrainConfig(**FAST, defense="qat", bits=[4], epochs=2)
    restore = _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, quiet=True)
    restore()
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    new_keys = {f.name for f in fields(DefenseParams)}
    payload["config"] = {k: v for k, v in payload["config"].items() if k not in new_keys}
    payload.pop("defense_state", None)
    save_checkpoint(tmp_path / "checkpoint.pt", {k: v for k, v in payload.items() if k not in ("format", "version")})
    assert train(cfg, tmp_path, resume=True, quiet=True)["epochs"][-1]["epoch"] == 2


def test_dwq_run_states_whether_it_is_the_faithful_or_the_fast_setting(tmp_path):
    record = train(TrainConfig(**FAST, defense="dwq", bits=[4, 2], epochs=1, dwq_attack="fgsm-rs"),
                   tmp_path, quiet=True)
    assert record["defense"]["dwq_setting"].startswith("fast (not the paper's setting): FGSM-RS")
    assert TrainConfig(defense="dwq").dwq_label().startswith("faithful: PGD-7, eps 8/255")


def test_gradient_noise_is_annealed_and_seeded(tiny_model):
    noise = GradientNoise(0.01)
    assert noise.std(0) == pytest.approx(0.1) and noise.std(100) < noise.std(0)
    grads = []
    for _ in range(2):
        for p in tiny_model.parameters():
            p.grad = torch.zeros_like(p)
        noise.apply(tiny_model, 0, torch.Generator().manual_seed(7))
        grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters()]))
    assert torch.equal(grads[0], grads[1]) and grads[0].std() == pytest.approx(0.1, rel=0.2)


def test_every_defense_hyperparameter_is_a_cli_option_stored_in_the_config():
    from qadtr.cli import cli

    options = {p.name for p in cli.commands["train"].params}
    assert {f.name for f in fields(DefenseParams)} <= options
    assert {f.name for f in fields(DefenseParams)} <= set(asdict(TrainConfig()))


BASE = ["train", "--arch", "tiny", "--dataset", "synthetic", "--epochs", "1", "--quiet"]


@pytest.mark.parametrize("args, fragment", [
    (["--defense", "qadtr", "--gir-lambda", "-1"], "--gir-lambda"),
    (["--defense", "qadtr", "--patch-fraction", "1.5"], "--patch-fraction"),
    (["--defense", "pbat", "--patch-fraction", "-0.1"], "--patch-fraction"),
    (["--defense", "qadtr", "--patch-size-min", "0"], "--patch-size-min"),
    (["--defense", "qadtr", "--patch-size-min", "6", "--patch-size-max", "4"], "--patch-size-max"),
    (["--defense", "qadtr", "--patch-size-max", "40"], "does not fit"),
    (["--defense", "qadtr", "--pool-size", "0"], "--pool-size"),
    (["--defense", "qadtr", "--fresh-steps", "-1"], "--fresh-steps"),
    (["--defense", "dwq", "--dwq-epsilon", "0"], "--dwq-epsilon"),
    (["--defense", "qadtr", "--gir-noise", "-0.5"], "--gir-noise"),
    (["--defense", "qadtr", "--bits", "32"], "GIR compares two bit-widths"),
    (["--defense", "qat", "--bits", "32"], "needs a quantized bit-width"),
])
def test_bad_hyperparameters_exit_2_with_one_line(run_cli, tmp_path, args, fragment):
    code, out, err = run_cli(*BASE, "--out", tmp_path / "run", *args)
    assert code == 2 and err.startswith("error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
