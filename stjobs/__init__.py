"""stjobs: one job spec, rendered and submitted as a distributed sentence-transformers training job.

The public API is what this module exports. Names are loaded on first use (PEP 562), so ``stjobs render``
pays only for the modules it touches; torch, submitit and kubernetes are imported only by code that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "cancel": "stjobs.api", "job_status": "stjobs.api", "logs": "stjobs.api", "render": "stjobs.api",
    "render_to": "stjobs.api", "render_job": "stjobs.api", "render_image": "stjobs.api", "build_image": "stjobs.api",
    "status": "stjobs.api", "submit": "stjobs.api", "wait": "stjobs.api",
    "load_spec": "stjobs.config", "validate_spec": "stjobs.config", "explain_spec": "stjobs.config",
    "RenderError": "stjobs.errors", "SpecError": "stjobs.errors", "StjobsError": "stjobs.errors",
    "SubmitError": "stjobs.errors", "UsageError": "stjobs.errors", "InputError": "stjobs.errors",
    "EnvError": "stjobs.errors", "OutputError": "stjobs.errors",
    "JobRecord": "stjobs.jobs", "JobStatus": "stjobs.jobs", "State": "stjobs.jobs",
    "LaunchPlan": "stjobs.launch", "build_launch": "stjobs.launch",
    "Plan": "stjobs.plan", "RenderedFile": "stjobs.plan", "write_plan": "stjobs.plan",
    "JobSpec": "stjobs.spec", "Launcher": "stjobs.spec", "Strategy": "stjobs.spec",
    "BenchOptions": "stjobs.bench", "BenchReport": "stjobs.bench", "run_bench": "stjobs.bench",
    "strategy_warning": "stjobs.api",
}
__all__ = [
    "BenchOptions", "BenchReport", "run_bench", "strategy_warning", "EnvError", "InputError", "OutputError",
    "build_image", "JobRecord", "JobSpec", "JobStatus", "LaunchPlan", "Launcher", "Plan", "RenderError", "RenderedFile",
    "SpecError", "State", "StjobsError", "Strategy", "SubmitError", "UsageError", "build_launch", "cancel",
    "job_status", "load_spec", "logs", "render", "render_image", "render_job", "render_to",
    "status", "submit", "validate_spec", "wait", "explain_spec",
    "write_plan",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stjobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from stjobs.api import (
        build_image,
        cancel,
        job_status,
        logs,
        render,
        render_image,
        render_job,
        render_to,
        status,
        strategy_warning,
        submit,
        wait,
    )
    from stjobs.bench import BenchOptions, BenchReport, run_bench
    from stjobs.config import explain_spec, load_spec, validate_spec
    from stjobs.errors import (
        EnvError,
        InputError,
        OutputError,
        RenderError,
        SpecError,
        StjobsError,
        SubmitError,
        UsageError,
    )
    from stjobs.jobs import JobRecord, JobStatus, State
    from stjobs.launch import LaunchPlan, build_launch
    from stjobs.plan import Plan, RenderedFile, write_plan
    from stjobs.spec import JobSpec, Launcher, Strategy
