import os
import pickle
import random

import pytest
import qadtr
import torch
from qadtr.checkpoint import load_checkpoint, load_matching_state, model_from_checkpoint, save_checkpoint
from qadtr.errors import CheckpointError


def _payload(model, arch="tiny"):
    return {"config": {"arch": arch, "model_bits": list(model.bit_choices), "num_classes": 10},
            "trained_bits": [32], "model": model.state_dict()}


def test_round_trip_rebuilds_the_same_model(tmp_path, tiny_model):
    x = torch.rand(2, 3, 32, 32)
    tiny_model.eval()
    qadtr.set_bits(tiny_model, 4)
    ref = tiny_model(x)
    save_checkpoint(tmp_path / "c.pt", _payload(tiny_model))
    model = model_from_checkpoint(load_checkpoint(tmp_path / "c.pt")).eval()
    qadtr.set_bits(model, 4)
    assert torch.allclose(model(x), ref, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary files left


def test_truncated_and_corrupt_checkpoints_are_refused(tmp_path, tiny_model):
    save_checkpoint(tmp_path / "c.pt", _payload(tiny_model))
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    for name in ("t.pt", "missing.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)


def test_garbage_bytes_always_get_the_one_line_error(tmp_path):
    # About 6% of random files once escaped as IndexError or KeyError from the unpickler, not CheckpointError.
    rng = random.Random(0)
    for i in range(300):
        path = tmp_path / f"g{i}.pt"
        path.write_bytes(rng.randbytes(1000))
        with pytest.raises(CheckpointError, match="corrupt or truncated|could run code|not a qadtr"):
            load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    _RunsCode.marker = tmp_path / "ran"
    torch.save({"format": "qadtr-checkpoint", "evil": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not _RunsCode.marker.exists()
    # A raw pickle (not a torch zip) is refused too.
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pt")
    assert not _RunsCode.marker.exists()


def test_non_qadtr_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a qadtr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_for_another_arch_is_refused(tmp_path, tiny_model):
    save_checkpoint(tmp_path / "c.pt", _payload(tiny_model))
    with pytest.raises(CheckpointError, match="arch 'tiny'"):
        model_from_checkpoint(load_checkpoint(tmp_path / "c.pt"), arch="resnet20")


def test_matching_state_seeds_new_bit_widths_from_float_bn():
    torch.manual_seed(0)
    src = qadtr.create_model("tiny", bits=(32,))
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_()
    dst = qadtr.create_model("tiny", bits=(4, 32))
    load_matching_state(dst, src.state_dict())
    assert torch.equal(dst.stem.bn.bns["4"].running_mean, src.stem.bn.bns["32"].running_mean)
    assert torch.equal(dst.stem.conv.weight, src.stem.conv.weight)


def test_matching_state_seeds_a_new_width_from_the_nearest_trained_one():
    torch.manual_seed(0)
    src = qadtr.create_model("tiny", bits=(4, 32))
    for m in src.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_()
    dst = qadtr.create_model("tiny", bits=(2, 4, 8, 32))
    load_matching_state(dst, src.state_dict())
    bns, src_bns = dst.stem.bn.bns, src.stem.bn.bns
    assert torch.equal(bns["2"].weight, src_bns["4"].weight)  # 4 is nearer to 2 than 32
    assert torch.equal(bns["8"].weight, src_bns["4"].weight)
    assert torch.equal(bns["32"].weight, src_bns["32"].weight)
    assert not torch.equal(src_bns["4"].weight, src_bns["32"].weight)  # so the asserts above can tell them apart


def _saved(model, trained_bits, **config):
    return {"config": {"arch": "tiny", "model_bits": list(model.bit_choices), "num_classes": 10, **config},
            "trained_bits": trained_bits, "model": model.state_dict()}


def test_checkpoint_rebuilds_the_policy_it_was_saved_with():
    from qadtr.layers import LEGACY_POLICY, QuantPolicy

    legacy = qadtr.create_model("tiny", bits=(4, 32), policy=LEGACY_POLICY)
    rebuilt = model_from_checkpoint(_saved(legacy, [4], policy=LEGACY_POLICY.as_dict()))
    assert rebuilt.policy == LEGACY_POLICY
    # Saved before config["policy"] existed, with quantized widths: the legacy placement, state and all.
    old = model_from_checkpoint(_saved(legacy, [4]))
    assert old.policy == LEGACY_POLICY and all(b.conv_input_quant is None for b in old.layers)
    # A float-only checkpoint fits any placement and gets today's default.
    float_only = qadtr.create_model("tiny", bits=(32,))
    assert model_from_checkpoint(_saved(float_only, [32])).policy == QuantPolicy()
    with pytest.raises(RuntimeError, match="conv_input_quant"):  # the two placements are different networks
        model_from_checkpoint(_saved(legacy, [4], policy=QuantPolicy().as_dict()))


def test_quantized_checkpoint_saved_before_shortcut_bits_keeps_switching_shortcuts():
    from qadtr.layers import STREAM8_POLICY

    model = qadtr.create_model("tiny", bits=(2, 32), policy=STREAM8_POLICY)
    qadtr.set_bits(model, 2)
    x = torch.rand(2, 3, 32, 32)
    before = model.eval()(x)
    saved_policy = {k: v for k, v in STREAM8_POLICY.as_dict().items() if k != "shortcut_bits"}
    for payload in (_saved(model, [2], policy=saved_policy), _saved(model, [2])):
        rebuilt = model_from_checkpoint(payload)
        assert rebuilt.policy == STREAM8_POLICY
        qadtr.set_bits(rebuilt, 2)
        assert torch.allclose(rebuilt.eval()(x), before, atol=1e-6)  # the same network, not a re-placed one


def test_float_checkpoint_from_before_the_stream_policy_loads_into_the_default_model():
    from qadtr.layers import LEGACY_POLICY, QuantPolicy

    old = qadtr.create_model("tiny", bits=(32,), policy=LEGACY_POLICY)
    x = torch.rand(2, 3, 32, 32)
    rebuilt = model_from_checkpoint(_saved(old, [32])).eval()
    assert rebuilt.policy == QuantPolicy()
    assert torch.allclose(rebuilt(x), old.eval()(x), atol=1e-6)  # the float path is the same network
    broken = _saved(old, [32])
    broken["model"] = {k: v for k, v in broken["model"].items() if not k.startswith("fc.")}
    with pytest.raises(CheckpointError, match="fc.weight is missing|fc.bias is missing"):
        model_from_checkpoint(broken)
