"""The environment a measurement was taken in: CPU, cores, thread settings, versions. Torch-free."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from qadtr.io import versions

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import onnxruntime as ort

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    out = {
        "cpu": cpu_model(), "machine": platform.machine(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "load_average": load, "thread_env": {k: os.environ.get(k) for k in THREAD_VARS if os.environ.get(k)},
        "ort_providers": ort.get_available_providers(), "ort_device": ort.get_device(),
        "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        from importlib import metadata

        out["versions"]["matplotlib"] = metadata.version("matplotlib")
    except Exception:  # noqa: BLE001 - optional package
        out["versions"]["matplotlib"] = None
    return out
