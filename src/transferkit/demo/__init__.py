"""The whole lesson in one command: ``run_demo(DemoConfig()) -> DemoResult`` and its HTML report."""

from transferkit.demo.result import DemoConfig, DemoResult, StepOutcome
from transferkit.demo.run import run_demo

__all__ = ["DemoConfig", "DemoResult", "StepOutcome", "run_demo"]
