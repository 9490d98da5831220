"""Fakes and checks for testing envs, policies and the code that runs them."""

from ._scripted import EnvTracker as EnvTracker
from ._scripted import ScriptedEnv as ScriptedEnv

__all__ = ["EnvTracker", "ScriptedEnv"]
