"""Workflows: what the ``robostack`` commands do, each built from the layers below it (the simulator, the
algorithms, the bundle format, datasets and, for recording and conversion, the deployment side).

``train`` (reinforcement learning), ``imitation`` (learning from a dataset), ``residual`` (RL on a frozen base),
``export`` (a run to a bundle), ``evaluate`` (a run or bundle in its task), ``render`` (offscreen frames and
videos), ``record`` (teleoperated demonstrations), ``replay`` and ``convert`` (datasets against the simulator and
from bags), ``bench`` (the timed end-to-end figures). Nothing below this package imports it.
"""
