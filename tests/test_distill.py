"""Distillation from a teacher checkpoint (qadtr.distill) in float and qat training."""
import json

import pytest
import torch
from qadtr.checkpoint import load_checkpoint
from qadtr.distill import Distillation, distillation_loss, ensemble_logits, load_teacher
from qadtr.errors import QadtrError
from qadtr.io import sha256_file
from qadtr.train import TrainConfig, train


@pytest.fixture(scope="module")
def float_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=2, batch_size=64, seed=5), out,
          quiet=True)
    return out / "checkpoint.pt"


def test_distillation_loss_is_zero_only_when_the_student_matches_the_teacher():
    teacher = torch.randn(16, 10)
    assert distillation_loss(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher + torch.randn(16, 10), teacher, 2.0).item() > 0.01
    # A constant shift of the logits is the same distribution.
    assert distillation_loss(teacher + 3.0, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_distillation_gradient_moves_the_student_towards_the_teacher():
    teacher = torch.randn(8, 10)
    student = torch.zeros(8, 10, requires_grad=True)
    before = distillation_loss(student, teacher, 1.0)
    before.backward()
    with torch.no_grad():
        stepped = student - 1.0 * student.grad
    assert distillation_loss(stepped, teacher, 1.0) < before
    # At T = 1 the gradient is (softmax(student) - softmax(teacher)) / batch.
    expected = (torch.softmax(student.detach(), 1) - torch.softmax(teacher, 1)) / 8
    assert torch.allclose(student.grad, expected, atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_weight_mixes_hard_and_soft_losses(weight):
    teacher_net = torch.nn.Linear(4, 3)
    x, student_logits = torch.randn(5, 4), torch.randn(5, 3)
    hard = torch.tensor(2.0)
    soft = distillation_loss(student_logits, teacher_net(x).detach(), 1.0)
    mixed = Distillation(teacher_net, weight, 1.0)(student_logits, x, hard)
    assert mixed.item() == pytest.approx((1 - weight) * 2.0 + weight * soft.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_ensemble_target_is_the_mean_of_the_members_softened_distributions(temperature):
    members = [torch.randn(6, 10) * 3 for _ in range(3)]
    combined = ensemble_logits(members, temperature)
    mean = torch.stack([torch.softmax(z / temperature, 1) for z in members]).mean(0)
    torch.testing.assert_close(torch.softmax(combined / temperature, 1), mean)
    assert ensemble_logits(members[:1], temperature) is members[0]


def test_an_ensemble_of_one_teacher_twice_teaches_what_the_teacher_does():
    teacher_net, other = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, student_logits, hard = torch.randn(5, 4), torch.randn(5, 3), torch.tensor(1.0)
    single = Distillation(teacher_net, 1.0, 2.0)(student_logits, x, hard)
    assert Distillation([teacher_net, teacher_net], 1.0, 2.0)(student_logits, x, hard).item() == \
        pytest.approx(single.item(), rel=1e-5)
    assert Distillation([teacher_net, other], 1.0, 2.0)(student_logits, x, hard).item() != \
        pytest.approx(single.item(), rel=1e-3)


def test_load_teacher_runs_the_float_path_frozen(float_teacher):
    teacher, bits = load_teacher(float_teacher, num_classes=10)
    assert bits == 32 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(QadtrError, match="classes"):
        load_teacher(float_teacher, num_classes=100)


def test_qat_with_a_teacher_trains_records_the_teacher_and_differs_from_plain_qat(tmp_path, float_teacher):
    base = dict(arch="tiny", defense="qat", bits=[2], dataset="synthetic", epochs=1, batch_size=64, seed=1,
                init=str(float_teacher))
    plain = train(TrainConfig(**base), tmp_path / "plain", quiet=True)
    distilled = train(TrainConfig(**base, teacher=str(float_teacher), distill_weight=1.0), tmp_path / "kd",
                      quiet=True)
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["inputs"]["teacher_sha256"] == [sha256_file(float_teacher)]
    assert metrics["teacher_bits"] == [32] and metrics["config"]["distill_weight"] == 1.0
    loss_kd, loss_plain = distilled["epochs"][0]["train_loss"], plain["epochs"][0]["train_loss"]
    assert torch.isfinite(torch.tensor(loss_kd)) and loss_kd != loss_plain
    ckpt = load_checkpoint(tmp_path / "kd" / "checkpoint.pt")
    assert ckpt["config"]["teacher"] == [str(float_teacher.resolve())]


def test_float_training_distils_from_an_ensemble_and_records_every_teacher(tmp_path, float_teacher):
    second = tmp_path / "second"
    train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, seed=6), second,
          quiet=True)
    teachers = [str(float_teacher), str(second / "checkpoint.pt")]
    train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, seed=1,
                      teacher=teachers, distill_weight=0.9, distill_temperature=4.0), tmp_path / "kd", quiet=True)
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["inputs"]["teacher_sha256"] == [sha256_file(t) for t in teachers]
    assert metrics["teacher_bits"] == [32, 32]


def test_a_student_distils_from_a_teacher_of_another_architecture(tmp_path):
    # The teacher is rebuilt from its own checkpoint's arch (resnet20 here), not the student's (tiny).
    teacher_run = tmp_path / "resnet20"
    train(TrainConfig(arch="resnet20", defense="float", dataset="synthetic", epochs=1, batch_size=64,
                      train_subset=128, eval_subset=64, seed=7), teacher_run, quiet=True)
    teacher, bits = load_teacher(teacher_run / "checkpoint.pt", num_classes=10)
    assert type(teacher).__name__ == "CifarResNet" and len(teacher.layers) == 9 and bits == 32
    train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, seed=1,
                      teacher=str(teacher_run / "checkpoint.pt"), distill_weight=0.9), tmp_path / "kd", quiet=True)
    metrics = json.loads((tmp_path / "kd" / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "tiny" and metrics["teacher_bits"] == [32]
    assert load_checkpoint(tmp_path / "kd" / "checkpoint.pt")["config"]["arch"] == "tiny"


def test_a_run_recorded_with_one_teacher_path_reads_back_as_a_list():
    # Checkpoints written before ensembles hold "teacher" as one string; resume compares configs.
    old = TrainConfig.from_dict({"arch": "tiny", "teacher": "/runs/float/checkpoint.pt"})
    assert old.teacher == ["/runs/float/checkpoint.pt"]
    assert TrainConfig.from_dict({"arch": "tiny", "teacher": None}).teacher is None


@pytest.mark.parametrize("change,message", [
    ({"defense": "qadtr", "bits": [32, 2]}, "--teacher works with --defense float or qat"),
    ({"distill_weight": 1.5}, "--distill-weight must be in"),
    ({"distill_temperature": 0.0}, "--distill-temperature must be positive"),
])
def test_bad_distillation_settings_are_refused(change, message):
    cfg = TrainConfig(**{"arch": "tiny", "defense": "qat", "bits": [4], "teacher": "t.pt", **change})
    with pytest.raises(QadtrError, match=message):
        cfg.resolved()

