"""The CartPole rollout of cartpole.py, on Trio instead of asyncio.

Nothing in the rollout changes: async-rollout runs on anyio, so only the
``backend`` argument does. The same seeds give the same episodes on both
backends, so this prints what ``python examples/cartpole.py`` prints (but for
the speed). Needs ``pip install trio`` (or ``pip install 'async-rollout[trio]'``).
"""

import anyio
from cartpole import main  # the same rollout, from the script next to this one

if __name__ == "__main__":
    anyio.run(main, backend="trio")
