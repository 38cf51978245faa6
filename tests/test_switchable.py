"""Switchable precision on shared float weights (issue: foundation, acceptance on resnet20)."""
import pytest
import qadtr
import torch
from brevitas.nn import QuantConv2d, QuantReLU
from qadtr.layers import LEGACY_POLICY, STREAM8_POLICY
from qadtr.switchable import SwitchableBatchNorm2d, get_bits


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return qadtr.create_model("resnet20", bits=(2, 4, 8, 32)).eval()


def largest_conv(model):
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return max(convs, key=lambda m: m.weight.numel())


@pytest.mark.parametrize("w", [2, 4])
def test_int_weights_take_exactly_narrow_range_levels_per_channel(resnet20, w):
    qadtr.set_bits(resnet20, w)
    resnet20(torch.rand(2, 3, 32, 32))  # thresholds initialise on first use
    conv = largest_conv(resnet20)
    ints = conv.quant_weight().int().flatten(1)
    for row in ints:
        levels = torch.unique(row)
        assert len(levels) == 2**w - 1
        assert levels.abs().max() == 2 ** (w - 1) - 1


@pytest.mark.parametrize("a", [2, 4, 8])
def test_every_switchable_conv_reads_at_most_2_pow_a_values(resnet20, a):
    """'A2' means what each switchable conv reads; the stem and the 8-bit shortcuts read 8 bits (QuantPolicy)."""
    qadtr.set_bits(resnet20, a)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0].detach()))
             for name, m in resnet20.named_modules()
             if isinstance(m, QuantConv2d) and not name.startswith("stem") and "shortcut" not in name]
    resnet20(torch.rand(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(seen) == 18  # 2 in each of 9 blocks
    for name, x in seen.items():
        assert len(torch.unique(x)) <= 2**a, name
    assert max(len(torch.unique(x)) for x in seen.values()) > 2 ** (a - 1)  # the levels are actually used


def test_residual_stream_keeps_its_own_width_at_2_bits(resnet20):
    qadtr.set_bits(resnet20, 2)
    streams = []
    hooks = [m.register_forward_hook(lambda m, i, o: streams.append(o.detach()))
             for name, m in resnet20.named_modules() if name == "stem_act" or name.endswith("act2")]
    resnet20(torch.rand(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(streams) == 10
    assert all(len(torch.unique(s)) <= 2**8 for s in streams)
    assert max(len(torch.unique(s)) for s in streams) > 2**2  # an 8-bit stream, not a 2-bit one


def test_projection_shortcuts_keep_8_bit_weights_and_read_the_stream_at_2_bits(resnet20):
    qadtr.set_bits(resnet20, 2)
    shortcuts = [b.shortcut.conv for b in resnet20.layers if b.shortcut is not None]
    inputs = []
    hooks = [c.register_forward_pre_hook(lambda m, i: inputs.append(i[0].detach())) for c in shortcuts]
    resnet20(torch.rand(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(shortcuts) == 2 and len(inputs) == 2
    assert max(len(torch.unique(x)) for x in inputs) > 2**2  # the 8-bit stream, not the 2-bit conv input
    for conv in shortcuts:
        levels = torch.unique(conv.quant_weight().int())
        assert len(levels) > 3 and levels.abs().max() <= 127  # 8-bit, not ternary


def test_switching_shortcuts_policy_gives_them_the_active_width():
    model = qadtr.create_model("resnet20", bits=(2, 32), policy=STREAM8_POLICY)
    qadtr.set_bits(model, 2)
    for conv in (b.shortcut.conv for b in model.layers if b.shortcut is not None):
        assert len(torch.unique(conv.quant_weight().int())) <= 3


def test_legacy_policy_quantizes_the_stream_at_the_active_width():
    model = qadtr.create_model("resnet20", bits=(2, 32), policy=LEGACY_POLICY)
    qadtr.set_bits(model, 2)
    streams = []
    hooks = [m.register_forward_hook(lambda m, i, o: streams.append(o.detach()))
             for m in model.modules() if isinstance(m, QuantReLU)]
    model(torch.rand(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert len(streams) == 19 and all(len(torch.unique(s)) <= 4 for s in streams)


def test_outputs_differ_between_bit_widths(resnet20):
    x = torch.rand(4, 3, 32, 32)
    outs = {}
    for b in (32, 8, 4, 2):
        qadtr.set_bits(resnet20, b)
        outs[b] = resnet20(x)
    for b in (8, 4, 2):
        assert not torch.allclose(outs[32], outs[b])
    assert not torch.allclose(outs[4], outs[2])


def test_float_path_bypasses_every_quantizer(resnet20):
    """At 32 bits the model equals the same network with plain float layers."""
    x = torch.rand(2, 3, 32, 32)
    qadtr.set_bits(resnet20, 32)
    out = resnet20(x)
    stem = resnet20.stem
    ref = torch.relu(stem.bn.bns["32"](torch.nn.functional.conv2d(resnet20.normalize(x), stem.conv.weight, padding=1)))
    got = resnet20.stem_act(stem(resnet20.input_quant(resnet20.normalize(x))))
    assert torch.allclose(got, ref, atol=1e-6)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("w", [2, 8, 32])
def test_gradients_reach_shared_weights_and_only_active_bn(w):
    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=(2, 8, 32)).train()
    qadtr.set_bits(model, w)
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    conv = largest_conv(model)
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm2d):
            for key, bn in m.bns.items():
                if key == str(w):
                    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
                else:
                    assert bn.weight.grad is None


def test_bits_context_restores_previous_pair(tiny_model):
    qadtr.set_bits(tiny_model, 8)
    with qadtr.bits(tiny_model, 2):
        assert get_bits(tiny_model) == (2, 2)
    assert get_bits(tiny_model) == (8, 8)


def test_mixed_weight_and_activation_bits(tiny_model):
    qadtr.set_bits(tiny_model, 8, 2)
    assert get_bits(tiny_model) == (8, 2)
    tiny_model(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("w,a", [(3, None), (1, None), (16, None), (32, 8), (8, 6)])
def test_set_bits_refuses_widths_outside_the_model_set(tiny_model, w, a):
    with pytest.raises(ValueError):
        qadtr.set_bits(tiny_model, w, a)


def test_state_dict_round_trip_keeps_every_precision(tiny_model):
    x = torch.rand(3, 3, 32, 32)
    tiny_model.eval()
    before = {}
    for b in (32, 8, 4, 2):
        qadtr.set_bits(tiny_model, b)
        before[b] = tiny_model(x)
    clone = qadtr.create_model("tiny", bits=(2, 4, 8, 32)).eval()
    clone.load_state_dict(tiny_model.state_dict())
    for b, ref in before.items():
        qadtr.set_bits(clone, b)
        assert torch.allclose(clone(x), ref, atol=1e-6)


def test_registry():
    assert {"resnet20", "resnet56", "tiny"} <= set(qadtr.list_models())
    with pytest.raises(ValueError, match="unknown model"):
        qadtr.create_model("resnet21")
    m = qadtr.create_model("resnet56", bits=(4, 32), num_classes=7)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    assert m.bit_choices == (4, 32)


def _conv_thresholds(conv):
    from qadtr.quant import WeightThreshold

    return next(m for m in conv.weight_quant.modules() if isinstance(m, WeightThreshold))


@pytest.mark.parametrize("w", [2, 4])
def test_projection_revives_a_dead_channel_and_leaves_sane_thresholds_alone(tiny_model, w):
    from qadtr.quant import project_weight_thresholds

    qadtr.set_bits(tiny_model, w)
    tiny_model(torch.rand(2, 3, 32, 32))  # thresholds initialise on first use
    conv = largest_conv(tiny_model)
    param = _conv_thresholds(conv).thresholds[str(w)]
    before = param.detach().clone()
    amax = conv.weight.detach().abs().flatten(1).amax(1)
    with torch.no_grad():
        param[0] = 3 * amax[0]  # above 2 max|w|: at 2 bits every weight of channel 0 rounds to zero
    if w == 2:
        assert (conv.quant_weight().int()[0] == 0).all()
    assert project_weight_thresholds(tiny_model) == 1
    assert param[0].item() == pytest.approx(amax[0].item())
    assert torch.equal(param[1:], before[1:].abs())  # MSE-initialised thresholds sit below max |w|
    ints = conv.quant_weight().int()[0]
    assert ints.abs().max() == 2 ** (w - 1) - 1  # the channel's largest weight reaches the top level again
    assert project_weight_thresholds(tiny_model) == 0


def test_training_never_leaves_a_threshold_above_max_abs_weight(tmp_path):
    from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
    from qadtr.train import TrainConfig, train

    record = train(TrainConfig(arch="tiny", defense="qat", bits=[2], dataset="synthetic", epochs=1, batch_size=32,
                               lr=0.5, seed=0), tmp_path, quiet=True)
    assert record["epochs"][0]["thresholds_clamped"] > 0  # at this LR LSQ pushes thresholds past max |w|
    model = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"))
    qadtr.set_bits(model, 2)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        t = _conv_thresholds(conv).thresholds["2"].detach().abs().flatten()
        assert (t <= conv.weight.detach().abs().flatten(1).amax(1) + 1e-7).all()
