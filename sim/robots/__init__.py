"""RoboStack sim/robots."""
