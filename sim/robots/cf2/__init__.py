"""Bitcraze Crazyflie 2.x quadrotor: URDF description and MuJoCo builder (see model.py)."""
