"""Stochastic weight averaging: the running mean, the LR it trains at, the checkpoint it leaves, resume."""
import pytest
import torch
from qadtr import create_model
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.errors import QadtrError
from qadtr.evaluate import accuracy_per_bits
from qadtr.swa import WeightAverage
from qadtr.train import TrainConfig, learning_rate, lr_multiplier, train


def test_weight_average_is_the_mean_of_the_updates():
    models = [create_model("tiny", bits=(4, 32)) for _ in range(3)]
    average = WeightAverage()
    for m in models:
        average.update(m)
    assert average.count == 3
    for name, _ in models[0].named_parameters():
        expected = torch.stack([dict(m.named_parameters())[name].detach() for m in models]).mean(0)
        assert torch.allclose(average.mean[name], expected, atol=1e-6), name


def test_averaged_model_reestimates_bn_and_leaves_the_live_model_alone():
    model = create_model("tiny", bits=(4, 32))
    average = WeightAverage()
    average.update(model)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.rand(16, 3, 32, 32) * 0.5 for _ in range(2)]
    averaged = average.averaged_model(model, batches, [32, 4])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in live.items())
    stats = {k: v for k, v in averaged.state_dict().items() if k.endswith("running_mean")}
    assert stats and all(not torch.equal(v, live[k]) for k, v in stats.items())  # re-estimated from the batches
    with pytest.raises(ValueError, match="no weights"):
        WeightAverage().averaged_model(model, batches, [32])


def test_lr_anneals_to_swa_lr_then_stays_constant():
    cfg = TrainConfig(arch="tiny", defense="float", epochs=10, lr=0.1, swa_epochs=3, swa_lr=0.02).resolved()
    steps = 50
    lrs = [learning_rate(cfg, s, steps) for s in range(10 * steps)]
    assert lrs[0] == pytest.approx(0.1)
    assert all(lr == 0.02 for lr in lrs[7 * steps:])
    assert lrs[7 * steps - 1] == pytest.approx(0.02, abs=1e-4) and min(lrs) >= 0.02
    plain = TrainConfig(arch="tiny", defense="float", epochs=10, lr=0.1).resolved()
    assert [learning_rate(plain, s, steps) for s in range(500)] == [0.1 * lr_multiplier(s, 500, 0, "cosine")
                                                                     for s in range(500)]


def test_swa_lr_defaults_to_a_tenth_of_the_peak():
    assert TrainConfig(arch="tiny", defense="float", lr=0.05, swa_epochs=1).resolved().swa_lr == pytest.approx(0.005)


@pytest.mark.parametrize("swa_epochs,swa_lr", [(4, None), (-1, None), (1, 0.0)])
def test_bad_swa_settings_are_refused(swa_epochs, swa_lr):
    with pytest.raises(QadtrError, match="--swa-"):
        TrainConfig(arch="tiny", defense="float", epochs=3, swa_epochs=swa_epochs, swa_lr=swa_lr).resolved()


def _cfg(**kw):
    return TrainConfig(**{"arch": "tiny", "defense": "qat", "bits": [32, 4], "dataset": "synthetic", "epochs": 3,
                          "batch_size": 32, "train_subset": 256, "seed": 5, "swa_epochs": 2, "swa_lr": 0.05, **kw})


def test_finished_swa_run_saves_the_average_it_evaluated(tmp_path):
    record = train(_cfg(), tmp_path, quiet=True)
    epochs = record["epochs"]
    assert "swa_test_acc" not in epochs[0]
    assert [e["swa_models"] for e in epochs[1:]] == [1, 2]
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["swa"]["count"] == 2
    model = model_from_checkpoint(payload)
    for name, p in model.named_parameters():
        if name.endswith(".weight") and p.dim() > 1:
            assert torch.allclose(p, payload["swa"]["mean"][name], atol=1e-6), name
    test = BatchLoader(load_dataset("synthetic", "test", None, False, seed=5).subset(None, 5), 256)
    acc = accuracy_per_bits(model, test, [32, 4])
    assert {str(b): a for b, a in acc.items()} == pytest.approx(epochs[-1]["swa_test_acc"])


def test_swa_run_crashed_after_an_averaged_epoch_resumes_to_the_same_model(tmp_path, monkeypatch):
    train(_cfg(), tmp_path / "straight", quiet=True)

    import qadtr.train as train_module

    real_save, saves = train_module.save_checkpoint, []

    def save_then_crash(path, payload):
        real_save(path, payload)
        saves.append(path)
        if len(saves) == 2:  # epoch 2 is the first averaged one
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), tmp_path / "crashed", quiet=True)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["swa"]["count"] == 1
    train(_cfg(), tmp_path / "crashed", resume=True, quiet=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "crashed" / "checkpoint.pt")["model"]
    for key, value in a.items():
        assert torch.allclose(value.float(), b[key].float(), atol=1e-5), key
