"""Mixup batches in float and qat training (qadtr.defenses.plain.mixup, ``--mixup``)."""
import pytest
import torch
from qadtr.checkpoint import load_checkpoint
from qadtr.defenses.plain import mixup
from qadtr.errors import QadtrError
from qadtr.train import TrainConfig, train


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_is_a_convex_combination_of_each_image_and_its_partner(alpha):
    x = torch.rand(32, 3, 8, 8)
    mixed, perm, lam = mixup(x, alpha, torch.Generator().manual_seed(0))
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(32)) and perm.tolist() != list(range(32))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    assert mixed.min() >= 0 and mixed.max() <= 1


def test_mixup_draws_are_seeded_and_spread_over_the_beta():
    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return [mixup(torch.rand(4, 3, 2, 2), 1.0, g)[2] for _ in range(200)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    lams = torch.tensor(draws(3))
    # Beta(1, 1) folded onto [0.5, 1] is uniform there: mean 0.75.
    assert lams.mean().item() == pytest.approx(0.75, abs=0.03)
    assert lams.min() < 0.55 and lams.max() > 0.95


def test_mixup_training_feeds_mixed_images_and_logs_lambda(tmp_path):
    record = train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, mixup=0.4,
                               seed=0), tmp_path / "run", quiet=True)
    epoch = record["epochs"][0]
    assert 0.5 <= epoch["defense_stats"]["mixup_lambda"] < 1.0
    assert torch.isfinite(torch.tensor(epoch["train_loss"]))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["mixup"] == 0.4
    plain = train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, seed=0),
                  tmp_path / "plain", quiet=True)
    assert "defense_stats" not in plain["epochs"][0]
    assert plain["epochs"][0]["train_loss"] != epoch["train_loss"]


def test_mixup_run_resumes_to_the_uninterrupted_result(tmp_path, train_cut_after_first_epoch):
    cfg = TrainConfig(arch="tiny", defense="qat", bits=[4], dataset="synthetic", epochs=2, batch_size=64, mixup=1.0,
                      seed=2)
    whole = train(cfg, tmp_path / "whole", quiet=True)

    train_cut_after_first_epoch(cfg, tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(whole["epochs"][-1]["train_loss"], rel=1e-6)
    assert resumed["epochs"][-1]["defense_stats"] == whole["epochs"][-1]["defense_stats"]


@pytest.mark.parametrize("kwargs, message", [
    ({"defense": "float", "mixup": -0.1}, "--mixup must be"),
    ({"defense": "pbat", "mixup": 0.2}, "--mixup works with --defense float or qat"),
])
def test_bad_mixup_is_refused(kwargs, message):
    with pytest.raises(QadtrError, match=message):
        TrainConfig(arch="tiny", dataset="synthetic", **kwargs).resolved()
