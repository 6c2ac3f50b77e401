"""Pydantic building blocks shared by the config schema (tokenbench.config) and the phase schemas
(tokenbench.load.phases) and the model stage's (tokenbench.models). They live apart from both so that config.py can import the phases, and
the phases these blocks, without an import cycle."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
Name = Annotated[str, Field(pattern=NAME_RE)]  # a key that becomes a path component and a rule wildcard


class Strict(BaseModel):
    """A config block: an unknown key is an error naming it (a typo must not fall back to a default)."""

    model_config = ConfigDict(extra="forbid")
