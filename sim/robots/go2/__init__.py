"""Unitree Go2 quadruped: URDF description and MuJoCo builder (see model.py)."""
