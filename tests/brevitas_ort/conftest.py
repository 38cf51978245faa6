"""A small trained and calibrated model, shared by the export tests (after brevitas's tests/brevitas_ort)."""
import pytest

QUANT_BITS = (2, 3, 4, 5, 6, 7, 8)


@pytest.fixture(scope="session")
def calibrated_tiny(tmp_path_factory):
    """(checkpoint path, model): the tiny net trained 2 epochs on synthetic data, calibrated at 2..8 bits."""
    import qadtr
    import torch
    from qadtr.calibration import calibrate
    from qadtr.checkpoint import save_checkpoint
    from qadtr.data.arrays import synthetic
    from qadtr.data.loader import BatchLoader

    torch.manual_seed(0)
    model_bits = (*QUANT_BITS, 32)
    model = qadtr.create_model("tiny", bits=model_bits)
    # A short float training run, so logits are far from ties and parity is meaningful.
    qadtr.set_bits(model, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(2):
        for x, y in BatchLoader(synthetic(512, seed=0), 32, shuffle=True, seed=0):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    calibrate(model, BatchLoader(synthetic(256, seed=0), 64, shuffle=True), model_bits, num_batches=2)
    qadtr.set_bits(model, 32)
    model.eval()
    ckpt = tmp_path_factory.mktemp("tiny") / "calibrated.pt"
    config = {"arch": "tiny", "num_classes": 10, "model_bits": list(model_bits), "defense": "ptq(float)"}
    save_checkpoint(ckpt, {"config": config, "trained_bits": list(model_bits), "model": model.state_dict(),
                           "epoch": 2, "metrics": []})
    return ckpt, model


@pytest.fixture(scope="session")
def synthetic_images():
    """(images float32 NCHW in [0, 1], labels): a few synthetic test images."""
    from qadtr.data.arrays import synthetic
    from qadtr.data.loader import to_tensor

    data = synthetic(64, seed=1)
    return to_tensor(data.x).numpy(), data.y
