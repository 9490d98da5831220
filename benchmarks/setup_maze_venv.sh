#!/usr/bin/env bash
# Builds the throwaway virtualenv B3 uses to run Maze's SequentialRolloutRunner.
#
# maze-rl 0.2.2 declares Python < 3.11, so it is installed with
# --ignore-requires-python and --no-deps, then its declared dependencies, then
# torch (which maze imports but does not declare). Several GB (torch pulls the
# CUDA wheels from PyPI); a few minutes here. The venv sees the system
# site-packages (gymnasium, numpy, anyio) so async-rollout runs in it too.
#
#   bash benchmarks/setup_maze_venv.sh [VENV_DIR]     # default /tmp/mazevenv
#   python -m benchmarks -s B3 --maze-python VENV_DIR/bin/python
set -euo pipefail
venv="${1:-/tmp/mazevenv}"
python -m venv "$venv" --system-site-packages
"$venv/bin/pip" install --ignore-requires-python --no-deps "maze-rl==0.2.2"
"$venv/bin/pip" install tensorboard pyyaml requests pillow hydra-core pandas networkx \
    matplotlib seaborn tqdm imageio redis cloudpickle pytest-redis
"$venv/bin/pip" install torch
"$venv/bin/python" -c "from maze.core.rollout.sequential_rollout_runner import SequentialRolloutRunner"
echo "Maze ready: python -m benchmarks -s B3 --maze-python $venv/bin/python"
