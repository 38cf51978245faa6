"""Small ONNX models built here (a trained tiny conv net, its fp32 export and ORT int8), patches, a manifest."""
import json
import warnings

import numpy as np
import pytest

N_IMAGES = 64
SEED = 3


def _tiny_net():
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.conv2(x))
            return self.fc(x.mean((2, 3)))

    return TinyNet()


@pytest.fixture(scope="session")
def deploy_models(tmp_path_factory):
    """``{"dir", "fp32", "int8", "torch", "patches": [paths]}``; the float net is trained a little on synthetic data."""
    import torch
    from qadtr.data.arrays import load_dataset
    from qadtr.deploy.baselines import build_ort_int8
    from qadtr.transfer import to_float_nchw

    torch.manual_seed(0)
    net = _tiny_net()
    train = load_dataset("synthetic", "train", seed=0)
    x, y = torch.from_numpy(to_float_nchw(train.x)), torch.from_numpy(train.y)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for step in range(40):  # enough for clearly-above-chance predictions, so ASR cells are not degenerate
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    folder = tmp_path_factory.mktemp("models")
    fp32 = folder / "tinynet_fp32.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and the one `qadtr export` uses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(fp32), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False, opset_version=17)
    int8 = folder / "tinynet_w8a8.qdq.onnx"
    build_ort_int8(fp32, "input", to_float_nchw(train.x[:64]), int8)
    patches = folder / "patches"
    patches.mkdir()
    rng = np.random.default_rng(0)
    square = rng.random((3, 8, 8), dtype=np.float32)
    np.save(patches / "square8.npy", square)
    disc = np.concatenate([rng.random((3, 6, 6), dtype=np.float32), np.ones((1, 6, 6), np.float32)])
    disc[3, 0, 0] = disc[3, -1, -1] = 0.0
    np.save(patches / "masked6.npy", disc)
    return {"dir": folder, "fp32": fp32, "int8": int8, "torch": net,
            "patches": sorted(patches.glob("*.npy"))}


@pytest.fixture
def manifest_dir(deploy_models, tmp_path):
    """The two models beside a manifest.json shaped like `qadtr export`'s."""
    from qadtr.io import sha256_file

    entries = []
    for key, fmt, bits in (("fp32", "fp32", 32), ("int8", "qcdq", 8)):
        dst = tmp_path / deploy_models[key].name
        dst.write_bytes(deploy_models[key].read_bytes())
        entries.append({"file": dst.name, "sha256": sha256_file(dst), "file_bytes": dst.stat().st_size,
                        "format": fmt, "weight_bits": bits, "act_bits": bits, "packed_weight_bytes": 1234 + bits})
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "qadtr-export-manifest", "models": entries}))
    return tmp_path

