"""RoboStack: sim-to-real robot learning."""
__version__ = "0.1.0"
