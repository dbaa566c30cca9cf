"""Fixtures shared across the suite's folders."""
from __future__ import annotations

import pytest


@pytest.fixture
def pygame_events(monkeypatch):
    """pygame's event queue on SDL's dummy video driver: no window, no display, no pad."""
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()
    yield pygame
    pygame.display.quit()
