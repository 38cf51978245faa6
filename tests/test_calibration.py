"""PTQ: a float model becomes a working quantized model from calibration alone."""
import pytest
import qadtr
import torch
from qadtr.calibration import calibrate
from qadtr.checkpoint import load_matching_state
from qadtr.data.arrays import synthetic
from qadtr.data.loader import BatchLoader
from qadtr.evaluate import accuracy_per_bits
from qadtr.train import TrainConfig, train


def test_calibration_recovers_accuracy_lost_by_uncalibrated_quantization(tmp_path):
    train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=3, batch_size=32, seed=0),
          tmp_path, quiet=True)
    from qadtr.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    test = BatchLoader(synthetic(256, seed=1), 128)
    model = qadtr.create_model("tiny", bits=(4, 8, 32))
    load_matching_state(model, state)
    float_acc = accuracy_per_bits(model, test, [32])[32]
    assert float_acc > 0.5  # the float model learned the toy task

    # A deliberately bad threshold: everything clips, the model collapses.
    for name, p in model.named_parameters():
        if "thresholds" in name:
            p.data.fill_(1e-3)
    for buf_name, buf in model.named_buffers():
        if "initialized_" in buf_name:
            buf.fill_(True)
    broken = accuracy_per_bits(model, test, [8])[8]

    calibrate(model, BatchLoader(synthetic(512, seed=0), 64, shuffle=True), [8, 4], num_batches=4)
    acc = accuracy_per_bits(model, test, [8, 4])
    assert acc[8] >= float_acc - 0.05
    assert acc[4] >= float_acc - 0.15
    assert acc[8] > broken + 0.2
    assert qadtr.get_bits(model) == (32, 32)  # calibration restores the active precision


def test_calibration_updates_only_the_calibrated_bit_widths_bn(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items() if ".bns.2." in k}
    calibrate(tiny_model, [torch.rand(16, 3, 32, 32) for _ in range(2)], [8], num_batches=2)
    after = tiny_model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert not torch.equal(tiny_model.stem.bn.bns["8"].running_var, torch.ones(8))


def _qat_checkpoint_of(model, trained_bits):
    return {"config": {"arch": "tiny", "num_classes": 10, "model_bits": sorted(model.bit_choices),
                       "defense": "qat"},
            "trained_bits": trained_bits, "epoch": 1, "model": model.state_dict()}


def test_calibrating_a_checkpoint_adds_the_named_widths_and_keeps_the_trained_ones():
    from qadtr.calibration.checkpoint import calibrate_checkpoint
    from qadtr.checkpoint import model_from_checkpoint

    trained = qadtr.create_model("tiny", bits=(4, 32))
    with torch.no_grad():  # a trained 4-bit width: BN statistics no calibration would produce
        trained.stem.bn.bns["4"].running_mean.fill_(0.123)
    model, payload = calibrate_checkpoint(_qat_checkpoint_of(trained, [4]), [8, 2], synthetic(256, seed=0),
                                          batch_size=64, num_batches=2)
    assert sorted(model.bit_choices) == [2, 4, 8, 32]
    assert payload["config"]["model_bits"] == [2, 4, 8, 32]
    assert payload["config"]["defense"] == "ptq(qat)"
    assert payload["trained_bits"] == [2, 4, 8]  # the never-trained float path is not claimed
    assert torch.all(model.stem.bn.bns["4"].running_mean == 0.123)  # not recalibrated
    assert not torch.equal(model.stem.bn.bns["8"].running_var, torch.ones(8))  # calibrated
    reloaded = model_from_checkpoint(payload)
    x = torch.rand(4, 3, 32, 32)
    for b in (8, 4, 2):
        with qadtr.bits(reloaded, b), qadtr.bits(model, b):
            assert torch.allclose(reloaded.eval()(x), model.eval()(x))


def test_bn_only_refreshes_the_trained_widths_bn_and_keeps_their_thresholds():
    from qadtr.calibration.checkpoint import calibrate_checkpoint

    trained = qadtr.create_model("tiny", bits=(4, 32))
    with qadtr.bits(trained, 4):
        trained.train()(torch.rand(8, 3, 32, 32))  # thresholds initialise as in training
    with torch.no_grad():  # stale running statistics, as momentum leaves them after QAT
        trained.stem.bn.bns["4"].running_mean.fill_(0.123)
    thresholds = {k: v.clone() for k, v in trained.state_dict().items() if "threshold" in k}
    model, payload = calibrate_checkpoint(_qat_checkpoint_of(trained, [4]), [4], synthetic(256, seed=0),
                                          batch_size=64, num_batches=2, bn_only=True)
    state = model.state_dict()
    assert thresholds and all(torch.equal(v, state[k]) for k, v in thresholds.items())
    assert not torch.any(model.stem.bn.bns["4"].running_mean == 0.123)  # re-estimated
    assert payload["config"]["defense"] == "bn(qat)" and payload["calibration"]["bn_only"] is True
    assert payload["trained_bits"] == [4]


def test_bn_only_refuses_a_width_the_checkpoint_never_trained():
    from qadtr.calibration.checkpoint import calibrate_checkpoint
    from qadtr.errors import QadtrError

    trained = qadtr.create_model("tiny", bits=(4, 32))
    with pytest.raises(QadtrError, match="never trained or calibrated at 2 bits"):
        calibrate_checkpoint(_qat_checkpoint_of(trained, [4]), [4, 2], synthetic(64, seed=0), batch_size=32,
                             num_batches=1, bn_only=True)


def test_bn_reestimate_is_the_plain_batch_average_and_keeps_each_bns_momentum(tiny_model):
    from qadtr.calibration import reestimate_bn

    bn = tiny_model.stem.bn.bns["32"]
    bn.momentum = 0.03
    batches = [torch.rand(8, 3, 32, 32) * s for s in (0.5, 1.0, 2.0)]
    reestimate_bn(tiny_model, batches)
    assert bn.momentum == 0.03
    assert bn.num_batches_tracked.item() == len(batches)
    conv_out = [tiny_model.stem.conv(tiny_model.input_quant(tiny_model.normalize(x))) for x in batches]
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv_out]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert not tiny_model.training
