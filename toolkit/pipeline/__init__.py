"""``qadtr pipeline`` and ``qadtr demo``: train or load, attack, export, check, bench and report in one run folder.

One job per module: :mod:`.config` (settings from TOML and CLI, validated), :mod:`.stages` (skip a stage
whose inputs and config are unchanged; ``stage.json`` as the commit marker), :mod:`.jobs` (what each stage
does), :mod:`.gates` (``--fail-on``), :mod:`.verdict` (the per-precision table), :mod:`.run` (the chain)
and :mod:`.demo` (the built-in config over the embedded checkpoints).
"""
from .config import PipelineConfig, load_config
from .run import run_pipeline

__all__ = ["PipelineConfig", "load_config", "run_pipeline"]
