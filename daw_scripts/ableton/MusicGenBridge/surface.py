"""The control surface Live loads: a thin shell that ticks the controller on Live's display timer."""

from __future__ import annotations

import os

from _Framework.ControlSurface import ControlSurface

from .controller import Controller
from .settings import load_settings

HERE = os.path.dirname(os.path.abspath(__file__))


class MusicGenBridge(ControlSurface):  # type: ignore[misc]  # _Framework ships inside Live, without stubs
    def __init__(self, c_instance: object) -> None:
        ControlSurface.__init__(self, c_instance)
        settings, problem = load_settings(HERE, os.environ)
        self.controller = Controller(self.song(), settings, log=self.log_message, show=self.show_message)
        if problem:
            self.controller.say(problem)
        self.controller.say(f"listening for clips named `mg: <prompt>`; the bridge is at {self.controller.where}")

    def update_display(self) -> None:
        """Live calls this about every 100 ms: the script's only chance to read the bridge's replies."""
        ControlSurface.update_display(self)
        self.controller.tick()

    def disconnect(self) -> None:
        self.controller.close()
        ControlSurface.disconnect(self)
