"""The fleet file of `fedpilot plan`: client kinds with counts, memory budgets and uplinks.

    kinds:
      - {name: laptop, count: 20, memory: rtx4090-laptop, upload: "20Mbit/s*60s"}
      - {name: server, count: 2, memory: a100-80g}          # upload: unlimited

`memory` is a budget as in `clients.groups[].memory` (bytes, GPU name or a percentage of the
all-units cost); `upload` as in `clients.groups[].upload`. Unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedpilot.config import ConfigError, describe_errors, memory_budget, upload_budget


class ClientKind(BaseModel):
    """One kind of client in the fleet."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="label of the kind in tables and JSON")
    count: int = Field(gt=0, description="clients of this kind in the fleet")
    memory: str = Field(description="training memory: bytes ('16GiB'), a GPU name ('rtx4090'), or '40%'")
    upload: str = Field("unlimited", description="upload per round: 'unlimited', bytes, or '8Mbit/s*30s'")

    _memory_parses = field_validator("memory")(memory_budget)
    _upload_parses = field_validator("upload")(upload_budget)


class Fleet(BaseModel):
    """The kinds of clients that will take part."""

    model_config = ConfigDict(extra="forbid")
    kinds: list[ClientKind] = Field(min_length=1, description="client kinds, in the order tables list them")

    @model_validator(mode="after")
    def _names_unique(self) -> Fleet:
        names = [kind.name for kind in self.kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"kind names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return self


def load_fleet(path: str | Path) -> Fleet:
    """Read and validate a fleet file; `ConfigError` names the file and the field."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"fleet file {str(path)!r} does not exist")
    try:
        return Fleet.model_validate(yaml.safe_load(file.read_text()) or {})
    except yaml.YAMLError as error:
        raise ConfigError(f"fleet file {str(path)!r} is not valid YAML: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"fleet file {str(path)!r}:\n{describe_errors(error)}") from None
