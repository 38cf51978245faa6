import subprocess
import sys


def test_importing_qadtr_does_not_import_torch():
    code = "import sys, qadtr, qadtr.cli, qadtr.io, qadtr.data.arrays; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_training_api_resolves():
    import qadtr

    assert callable(qadtr.create_model) and callable(qadtr.set_bits)
