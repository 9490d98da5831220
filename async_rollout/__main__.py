"""``python -m async_rollout``: the ``async-rollout`` command."""

from ._cli import main

raise SystemExit(main())
