"""Every error the project raises on purpose, in one hierarchy.

    CityBrainError
    ├── ConfigError            bad settings, rules file, CLI argument (user must fix)
    ├── InputError             bad input data (a CSV row, a payload) - user must fix
    │   └── RejectedPayload    a message that goes to the DLQ, with a reason class
    ├── ServiceError           an external service misbehaved
    │   ├── TransientError     retry with backoff (connection lost, deadlock, timeout)
    │   └── PermanentError     retrying cannot help (constraint, data error): dead-letter
    └── StateError             an illegal transition (alert lifecycle, ...)

`storage.errors.classify` maps database exceptions onto Transient/Permanent in
one place.
"""

from __future__ import annotations


class CityBrainError(Exception):
    """Base of all project errors; str(e) is a one-line, user-facing message."""


class ConfigError(CityBrainError):
    pass


class InputError(CityBrainError):
    pass


class RejectedPayload(InputError):
    """A payload that cannot become an event. `reason` is a short class used as
    the DLQ header and metric label (e.g. 'malformed_json', 'out_of_range')."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class ServiceError(CityBrainError):
    pass


class TransientError(ServiceError):
    pass


class PermanentError(ServiceError):
    pass


class StateError(CityBrainError):
    pass
