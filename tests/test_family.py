"""PrecisionFamily: separately trained per-bit networks behind the set_bits API."""
import json

import pytest
import qadtr
import torch
from qadtr.attacks import QuantAwarePatchAttack
from qadtr.checkpoint import save_checkpoint
from qadtr.data.arrays import synthetic
from qadtr.errors import QadtrError
from qadtr.family import PrecisionFamily, family_from_checkpoints, parse_family_spec


def _member(bits, seed):
    torch.manual_seed(seed)
    model = qadtr.create_model("tiny", bits=(bits, 32))
    model.eval()
    return model


@pytest.fixture
def family_ckpts(tmp_path):
    paths = {}
    for b, seed in ((32, 0), (4, 1), (2, 2)):
        model = _member(b if b != 32 else 8, seed)
        path = tmp_path / f"m{b}.pt"
        save_checkpoint(path, {"config": {"arch": "tiny", "model_bits": sorted(model.bit_choices),
                                          "num_classes": 10, "defense": "qat"},
                               "trained_bits": [b], "model": model.state_dict()})
        paths[b] = path
    return paths


def test_set_bits_dispatches_to_the_member_trained_for_that_width():
    m4, m2 = _member(4, 1), _member(2, 2)
    family = PrecisionFamily({4: m4, 2: m2})
    x = torch.rand(3, 3, 32, 32)
    assert family.bit_choices == (4, 2)
    with torch.no_grad():
        with qadtr.bits(family, 2):
            assert torch.equal(family(x), qadtr.set_bits(m2, 2)(x))
        assert qadtr.get_bits(family) == (4, 4)  # the context restored the previous pair
        assert torch.equal(family(x), qadtr.set_bits(m4, 4)(x))
        assert not torch.equal(qadtr.set_bits(family, 2)(x), qadtr.set_bits(family, 4)(x))


def test_family_refuses_widths_it_does_not_serve():
    family = PrecisionFamily({4: _member(4, 1)})
    with pytest.raises(ValueError, match="not in this model's set"):
        qadtr.set_bits(family, 8)
    with pytest.raises(ValueError, match="WbAb"):
        qadtr.set_bits(family, 4, 8)
    with pytest.raises(QadtrError, match="not built for 2 bits"):
        PrecisionFamily({2: _member(4, 1)})


@pytest.mark.parametrize("spec,message", [
    ("8:a.pt", "BITS=CHECKPOINT"), ("9=a.pt", "outside 2..8"), ("4=a.pt,4=b.pt", "twice"), (",", "empty"),
])
def test_bad_family_specs_are_one_line_errors(spec, message):
    with pytest.raises(QadtrError, match=message):
        parse_family_spec(spec)


def test_aqapa_samples_across_the_family_members(family_ckpts):
    family, payloads = family_from_checkpoints(family_ckpts)
    assert set(payloads) == {32, 4, 2} and family.bit_choices == (32, 4, 2)
    attack = QuantAwarePatchAttack(family, bits=(32, 4, 2), size=4, steps=6, batch_size=16, seed=0)
    patch = attack.generate(family, synthetic(64, seed=0))
    assert patch.shape[-2:] == (4, 4) and float(patch.min()) >= 0 and float(patch.max()) <= 1
    assert sum(attack.bit_counts.values()) == 6


def test_cli_transfer_scores_a_family(run_cli, tmp_path, family_ckpts):
    spec = ",".join(f"{b}={p}" for b, p in family_ckpts.items())
    out = tmp_path / "a"
    code, _, err = run_cli("attack", spec, "--dataset", "synthetic", "--bits", "4", "--size", "4", "--steps", "3",
                           "--batch-size", "16", "--eval-n", "40", "--out", out, "--quiet")
    assert code == 0, err
    code, _, err = run_cli("transfer", spec, "--patches", out / "patch.npy", "--target-bits", "32,4,2", "--n", "40",
                           "--dataset", "synthetic", "--out", tmp_path / "t", "--quiet")
    assert code == 0, err
    result = json.loads((tmp_path / "t" / "transfer.json").read_text())
    assert set(result["clean_acc"]) == {"32", "4", "2"}
    assert result["checkpoint_sha256"].count("=") == 3
    code, _, err = run_cli("transfer", spec, "--patches", out / "patch.npy", "--target-bits", "8", "--n", "40",
                           "--dataset", "synthetic", "--out", tmp_path / "t2", "--quiet")
    assert code == 2 and "not in this checkpoint's set" in err and "Traceback" not in err
