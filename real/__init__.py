"""RoboStack real."""
