"""`imgpipe detect|generate|matte`: one process kind per stage, its backend chosen by settings.

Imports happen inside the handlers so that building the parser stays fast for every command.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from imgpipe.runtime.settings import load_settings

if TYPE_CHECKING:
    from imgpipe.stages.settings import StageSettings


def _settings(service_name: str) -> StageSettings:
    from imgpipe.stages.settings import StageSettings

    settings = load_settings(StageSettings)
    if "service_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"service_name": service_name})
    return settings


def _detect(args: argparse.Namespace) -> int:
    from imgpipe.stages.detect import DetectWork
    from imgpipe.stages.service import run_stage

    settings = _settings("detect")
    return run_stage(settings, DetectWork.stage, DetectWork.from_settings)


def _generate(args: argparse.Namespace) -> int:
    from imgpipe.stages.generate import GenerateWork
    from imgpipe.stages.service import run_stage

    settings = _settings("generate")
    return run_stage(settings, GenerateWork.stage, GenerateWork.from_settings)


def _matte(args: argparse.Namespace) -> int:
    from imgpipe.stages.matte import MatteWork
    from imgpipe.stages.service import run_stage

    settings = _settings("matte")
    return run_stage(settings, MatteWork.stage, MatteWork.from_settings)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    subparsers.add_parser("detect", help="stage 1: fetch, validate, normalize, find the pet").set_defaults(
        handler=_detect
    )
    subparsers.add_parser("generate", help="stage 2: restyle from the prompt").set_defaults(handler=_generate)
    subparsers.add_parser(
        "matte", help="stage 3: remove the background, resize, store the result"
    ).set_defaults(handler=_matte)
