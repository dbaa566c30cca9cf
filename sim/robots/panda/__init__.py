"""Franka Emika Panda arm: URDF description and MuJoCo builder (see model.py)."""
