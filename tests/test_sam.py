"""Sharpness-aware minimization (qadtr.sam, ``--sam-rho``): the ascent, the exact way back, the trainer."""
import pytest
import torch
from qadtr.checkpoint import load_checkpoint
from qadtr.errors import QadtrError
from qadtr.sam import SharpnessAwareStep
from qadtr.train import TrainConfig, train


def test_sam_gradient_is_the_gradient_at_the_worst_point_and_the_weights_come_back():
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    curvature = torch.rand(5, dtype=torch.float64) + 0.5
    w = torch.nn.Parameter(w0.clone())
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    sam = SharpnessAwareStep([w, frozen], rho=0.3)
    (0.5 * curvature * w * w).sum().backward()
    g = curvature * w0
    assert sam.ascend() == pytest.approx(float(g.norm()))
    worst = w0 + 0.3 * g / g.norm()
    assert torch.allclose(w.detach(), worst)
    assert float((w.detach() - w0).norm()) == pytest.approx(0.3)
    w.grad = None
    (0.5 * curvature * w * w).sum().backward()
    sam.descend()
    assert torch.equal(w.detach(), w0)
    assert torch.allclose(w.grad, curvature * worst)
    assert torch.equal(frozen.detach(), torch.ones(2))


ONE_STEP = {"arch": "tiny", "dataset": "synthetic", "defense": "float", "epochs": 1, "batch_size": 32,
            "train_subset": 32, "eval_subset": 32, "seed": 3}


@pytest.mark.parametrize("extra", [{}, {"mixup": 0.4}])
def test_sam_changes_the_step_but_counts_the_batch_once_in_bn_statistics(tmp_path, extra):
    """One step from the same init and batch: the running statistics come from the first forward only, so
    they equal plain SGD's; the weights differ, because SGD used the gradient at the perturbed point."""
    plain = train(TrainConfig(**ONE_STEP, **extra), tmp_path / "sgd", quiet=True)
    sharp = train(TrainConfig(**ONE_STEP, **extra, sam_rho=0.5), tmp_path / "sam", quiet=True)
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("sgd", "sam"))
    assert b["config"]["sam_rho"] == 0.5
    stats = [k for k in a["model"] if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in a["model"] if k.endswith("weight") and a["model"][k].dim() == 4]
    assert stats and weights
    for k in stats:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in weights)
    # The logged loss is the one at the weights the step started from, identical in both runs.
    assert sharp["epochs"][0]["train_loss"] == pytest.approx(plain["epochs"][0]["train_loss"], rel=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"defense": "float", "sam_rho": -0.1}, "--sam-rho must be"),
    ({"defense": "qadtr", "sam_rho": 0.05}, "--sam-rho works with --defense float or qat"),
])
def test_bad_sam_rho_is_refused(kwargs, message):
    with pytest.raises(QadtrError, match=message):
        TrainConfig(arch="tiny", dataset="synthetic", **kwargs).resolved()
