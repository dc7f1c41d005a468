"""The services file record: :class:`ServiceInput` (DOMAIN §2.1)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

__all__ = ["ExistingFeature", "JobToBeDone", "ServiceInput"]

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class JobToBeDone(BaseModel):
    """A job the service's customers want done; extra keys are kept verbatim."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class ExistingFeature(BaseModel):
    """A feature the service already has; shown to the model as context."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    feature_id: NonEmpty
    name: NonEmpty
    description: str


class ServiceInput(BaseModel):
    """One line of the services file. Strict: no coercion, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    service_id: NonEmpty
    name: NonEmpty
    description: str
    jobs_to_be_done: list[JobToBeDone]
    parent_id: NonEmpty | None = None
    customer_type: NonEmpty | None = None
    features: list[ExistingFeature] = Field(default_factory=list)

    @field_validator("jobs_to_be_done", mode="before")
    @classmethod
    def _bare_strings_are_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value
