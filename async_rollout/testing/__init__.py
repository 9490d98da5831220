"""Fakes and checks for testing envs, policies and the code that runs them."""

from ._chaos import ChaosSchedule as ChaosSchedule
from ._chaos import ChaosWrapper as ChaosWrapper
from ._check import check_async_env as check_async_env
from ._function_policy import FunctionPolicy as FunctionPolicy
from ._scripted import EnvTracker as EnvTracker
from ._scripted import ScriptedEnv as ScriptedEnv

__all__ = [
    "ChaosSchedule",
    "ChaosWrapper",
    "EnvTracker",
    "FunctionPolicy",
    "ScriptedEnv",
    "check_async_env",
]
