"""stjobs: one job spec, rendered and submitted as a distributed sentence-transformers training job.

The public API is what this module exports; everything heavy (torch, submitit, kubernetes) is imported only by
the functions that need it.
"""

from stjobs.api import cancel, job_status, logs, render, render_to, status, submit, wait
from stjobs.config import load_spec, validate_spec
from stjobs.errors import RenderError, SpecError, StjobsError, SubmitError, UsageError
from stjobs.jobs import JobRecord, JobStatus, State
from stjobs.launch import LaunchPlan, build_launch
from stjobs.plan import Plan, RenderedFile, write_plan
from stjobs.spec import JobSpec, Launcher, Strategy

__version__ = "0.1.0"

__all__ = [
    "JobRecord", "JobSpec", "JobStatus", "LaunchPlan", "Launcher", "Plan", "RenderError", "RenderedFile",
    "SpecError", "State", "StjobsError", "Strategy", "SubmitError", "UsageError", "build_launch", "cancel",
    "job_status", "load_spec", "logs", "render", "render_to", "status", "submit", "validate_spec", "wait",
    "write_plan",
]
