"""What the global options hand to every command."""

from __future__ import annotations

from dataclasses import dataclass

from clinipipe.cli.output import err, info
from clinipipe.spec import LoadedSpec, load_spec


@dataclass
class State:
    config: str | None = None
    _loaded: LoadedSpec | None = None

    def spec(self) -> LoadedSpec:
        """The validated spec (loaded once); raises SpecError listing every problem."""
        if self._loaded is None:
            self._loaded = load_spec(self.config)
        return self._loaded

    @staticmethod
    def notify(message: str, warning: bool = False) -> None:
        """Where a request ran (the running `cdc start` answered it), or a warning about it."""
        if warning:
            err.print(f"warning: {message}", style="yellow", markup=False)
        else:
            info(message)
