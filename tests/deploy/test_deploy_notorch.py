"""The device side runs without torch: check, bench and report end to end in a process where torch cannot load."""
import json
import subprocess
import sys

BLOCKED = ("torch", "torchvision", "brevitas")

SCRIPT = r"""
import importlib.abc, json, sys

BLOCKED = {blocked!r}
attempts = []


class Block(importlib.abc.MetaPathFinder):
    # Refuses the packages as an environment without them would, and remembers who asked.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None


sys.meta_path.insert(0, Block())
from qadtr.cli import main

codes = []
for argv in {commands!r}:
    sys.argv = ["qadtr", *argv]
    try:
        main()
    except SystemExit as e:
        codes.append(e.code)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({{"codes": codes, "attempts": attempts, "loaded": loaded}}))
"""


def test_check_bench_report_run_where_torch_cannot_be_imported(deploy_models, tmp_path):
    out = tmp_path / "artifacts"
    common = ["--dataset", "synthetic", "--quiet"]
    commands = [
        ["check", str(deploy_models["int8"]), str(deploy_models["fp32"]), "--patches",
         str(deploy_models["patches"][0].parent), "--n", "16", "--out", str(out / "check"), *common],
        ["bench", str(deploy_models["int8"]), "--fp32", str(deploy_models["fp32"]), "--batch", "1", "--threads", "1",
         "--warmup", "1", "--iters", "3", "--calib-n", "16", "--out", str(out / "bench"), *common],
        ["report", str(out), "--quiet"],
    ]
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(blocked=BLOCKED, commands=commands)],
                          capture_output=True, text=True, timeout=240, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["codes"] == [0, 0, 0], proc.stderr[-3000:]
    assert record["attempts"] == [] and record["loaded"] == []
    assert (out / "check" / "check.json").is_file() and (out / "bench" / "bench.json").is_file()
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
