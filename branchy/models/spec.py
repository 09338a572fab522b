"""What to build: :class:`BackboneConfig` (backbone name, side-exit positions, backbone options), the study's
``model:`` section and the CLI's ``--model/--exits/--option``. :class:`~branchy.models.base.ModelConfig` is what
was built (with the data's shape and the scheme's connections), stored in checkpoints."""
from __future__ import annotations

from dataclasses import dataclass

from ..core import is_int, setting
from .base import BranchyNet
from .zoo import BACKBONES, build_model, check_options, list_models


@dataclass(frozen=True)
class BackboneConfig:
    """A backbone from :data:`BACKBONES` with side exits after the blocks in ``exits`` (None: its default) and
    its own ``options`` (checked against the builder's signature, converted to its types)."""

    name: str = setting("b-lenet", "backbone (see `branchy models`)", cli=("--backbone", "--model"),
                       choices=list_models)
    exits: tuple[int, ...] | None = setting(None, "block indices after which side exits sit, e.g. 0,1 (none: the "
                                                  "backbone's own)", cli="--exits")
    options: dict = setting({}, "backbone option, e.g. depth=56", cli="--option")

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in BACKBONES:
            raise ValueError(f"unknown model {self.name!r}; known: {', '.join(BACKBONES.names())}")
        if self.exits is not None:
            if isinstance(self.exits, (str, bytes)) or not all(is_int(e) and e >= 0 for e in self.exits):
                raise ValueError(f"exits must be block indices (whole numbers >= 0, e.g. (0, 1)), got {self.exits!r}")
            object.__setattr__(self, "exits", tuple(int(e) for e in self.exits))
        if not isinstance(self.options, dict):
            raise ValueError(f"model options must be a dict of backbone options (e.g. {{'depth': 56}}), got "
                             f"{type(self.options).__name__} {self.options!r}")
        object.__setattr__(self, "options", check_options(self.name, self.options))

    def build(self, *, in_channels: int, image_size, num_classes: int, chain: str = "none",
              ensemble: bool = False) -> BranchyNet:
        return build_model(self.name, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                           exits=self.exits, chain=chain, ensemble=ensemble, **self.options)


__all__ = ["BackboneConfig"]
