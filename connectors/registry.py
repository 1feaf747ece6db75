"""Device registry: which sensor a LoRaWAN device or a SenML name is.

A network server (ChirpStack, The Things Stack) names a device by its DevEUI
or device id; a SenML pack names a measurement by `bn`+`n`. Neither says
which of our sensors it is, what it measures, in which unit, or where it is:
the registry does.

One entry per sensor (the simulator exports the same list, `sim.fleet.registry`):

    {"sensor_id": "bj-cy-pm25-0001", "sensor_type": "pm25", "unit": "ug/m3",
     "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
     "dev_eui": "70B3D57ED0041A2F", "device_id": "cb-bj-cy-pm25-0001",
     "field": "pm25", "names": ["urn:dev:mac:70b3d57ed0041a2f:pm25"],
     "interval_s": 60, "site": {"kind": "roadside"}}

`dev_eui` (16 hex digits, any case), `device_id` (TTS), `field`, `names`,
`interval_s` and `site` are optional. Several entries may share a device
(one uplink carrying PM2.5 and PM10): each then says which `field` of the
decoded object is its value; without `field` the sensor type's usual keys
are tried (`pm25`, `pm2_5`, ... see `DEFAULT_FIELDS`).

Loaded from a JSON file (`DeviceRegistry.from_file`) for the simulated city,
or from the PostgreSQL table `device_registry` (`load_from_postgres`) in a
real deployment. A bad entry fails the load with one line naming it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from citybrain.errors import ConfigError, RejectedPayload
from connectors.decoders.common import reason_for
from schemas import CATALOGUE, Location, SensorReading, SensorType

SAMPLE_FILE = Path(__file__).with_name("data") / "registry-sample.json"

_HEX16 = re.compile(r"^[0-9A-Fa-f]{16}$")

# Keys a vendor codec commonly uses for each quantity; the sensor type's own
# name comes first, so a codec that uses our names needs no `field` at all.
DEFAULT_FIELDS: dict[SensorType, tuple[str, ...]] = {
    SensorType.PM25: ("pm25", "pm2_5", "PM2.5", "pm2.5"),
    SensorType.PM10: ("pm10", "PM10"),
    SensorType.NO2: ("no2", "NO2"),
    SensorType.O3: ("o3", "O3"),
    SensorType.CO: ("co", "CO"),
    SensorType.SO2: ("so2", "SO2"),
    SensorType.WATER_LEVEL: ("water_level", "waterLevel", "level"),
    SensorType.RAINFALL: ("rainfall", "rain_rate", "rainRate"),
    SensorType.NOISE: ("noise", "laeq", "LAeq", "sound_level"),
    SensorType.TRAFFIC_FLOW: ("traffic_flow", "flow"),
    SensorType.TRAFFIC_SPEED: ("traffic_speed", "speed"),
    SensorType.MANHOLE_GAS: ("manhole_gas", "lel", "LEL", "gas"),
    SensorType.TEMPERATURE: ("temperature", "temp", "TempC"),
}


class DeviceEntry(BaseModel):
    """One sensor as the registry knows it."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    sensor_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    sensor_type: SensorType
    unit: str
    location: Location
    dev_eui: str | None = None
    device_id: str | None = Field(default=None, min_length=1, max_length=64)
    field: str | None = Field(default=None, min_length=1, max_length=128)
    names: tuple[str, ...] = ()
    interval_s: int | None = Field(default=None, gt=0)
    site: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dev_eui")
    @classmethod
    def _eui(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.replace("-", "").replace(":", "")
        if not _HEX16.match(v):
            raise ValueError("dev_eui must be 16 hex digits")
        return v.upper()

    @model_validator(mode="after")
    def _unit(self) -> DeviceEntry:
        expected = CATALOGUE[self.sensor_type].unit
        if self.unit != expected:
            raise ValueError(f"unit {self.unit!r} is not {expected!r} for {self.sensor_type.value}")
        return self

    @property
    def fields(self) -> tuple[str, ...]:
        """Keys of a decoded uplink object that may carry this sensor's value."""
        return (self.field,) if self.field else DEFAULT_FIELDS[self.sensor_type]


    def reading(self, value: float, ts: datetime, event_id: str, source: str) -> SensorReading:
        """This sensor's reading of `value` at `ts`, checked against the catalogue's
        physical range; a refusal is a `RejectedPayload` with its reason."""
        try:
            return SensorReading.model_validate(
                {
                    "event_id": event_id,
                    "sensor_id": self.sensor_id,
                    "sensor_type": self.sensor_type,
                    "value": value,
                    "unit": self.unit,
                    "ts": ts,
                    "location": self.location,
                    "source": source,
                }
            )
        except ValidationError as exc:
            raise reason_for(exc) from None


def number(value: Any, where: str) -> float:
    """A JSON number as float; booleans and strings are wrong types."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedPayload("wrong_type", f"{where} must be a number, got {type(value).__name__}")
    try:
        f = float(value)
    except OverflowError:
        raise RejectedPayload("out_of_range", f"{where} is too large") from None
    if not math.isfinite(f):
        raise RejectedPayload("non_finite", f"{where} is not a finite number")
    return f


def _lookup(obj: Mapping[str, Any], key: str) -> Any:
    """`obj[key]`, or a dotted path into nested objects ("air.pm25"); None if absent."""
    if key in obj:
        return obj[key]
    node: Any = obj
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def object_values(entries: Sequence[DeviceEntry], obj: Mapping[str, Any]) -> list[tuple[DeviceEntry, str, float]]:
    """(sensor, field, value) for every sensor of a device whose field is in the
    decoded uplink object. A device whose object carries none of them is refused
    (`missing_field`); a sensor whose field is absent is skipped, so a device
    that alternates payload kinds still delivers what each uplink carries."""
    found: list[tuple[DeviceEntry, str, float]] = []
    for entry in entries:
        for key in entry.fields:
            raw = _lookup(obj, key)
            if raw is None:
                continue
            found.append((entry, key, number(raw, f"object.{key}")))
            break
    if not found:
        wanted = sorted({k for e in entries for k in e.fields[:1]})
        keys = sorted(str(k) for k in obj)[:10]
        raise RejectedPayload(
            "missing_field", f"decoded object has none of the registered fields {wanted} (it has {keys})"
        )
    return found


def normalise_eui(eui: str) -> str:
    return eui.replace("-", "").replace(":", "").upper()


class DeviceRegistry:
    """Immutable after construction; lookups are dict hits."""

    def __init__(self, entries: Iterable[DeviceEntry]) -> None:
        self.entries: tuple[DeviceEntry, ...] = tuple(entries)
        by_sensor: dict[str, DeviceEntry] = {}
        by_name: dict[str, DeviceEntry] = {}
        by_eui: dict[str, list[DeviceEntry]] = {}
        by_dev: dict[str, list[DeviceEntry]] = {}
        for e in self.entries:
            if e.sensor_id in by_sensor:
                raise ConfigError(f"device registry: sensor_id {e.sensor_id!r} appears twice")
            by_sensor[e.sensor_id] = e
            for name in (e.sensor_id, *e.names):
                other = by_name.get(name)
                if other is not None and other is not e:
                    raise ConfigError(
                        f"device registry: name {name!r} of {e.sensor_id!r} is already {other.sensor_id!r}"
                    )
                by_name[name] = e
            if e.dev_eui:
                by_eui.setdefault(e.dev_eui, []).append(e)
            if e.device_id:
                by_dev.setdefault(e.device_id, []).append(e)
        for key, group in (*by_eui.items(), *by_dev.items()):
            if len(group) > 1:
                fields = [g.fields[0] for g in group]
                if len(set(fields)) != len(fields) or any(g.field is None for g in group):
                    ids = ", ".join(g.sensor_id for g in group)
                    raise ConfigError(
                        f"device registry: device {key!r} carries several sensors ({ids}); "
                        "each needs its own distinct 'field'"
                    )
        self._by_sensor = by_sensor
        self._by_name = by_name
        self._by_eui = {k: tuple(v) for k, v in by_eui.items()}
        self._by_device_id = {k: tuple(v) for k, v in by_dev.items()}

    def __repr__(self) -> str:
        return f"DeviceRegistry({len(self.entries)} sensors)"

    def __len__(self) -> int:
        return len(self.entries)

    # ---- construction ----------------------------------------------------

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], *, source: str = "registry") -> DeviceRegistry:
        entries = []
        for i, rec in enumerate(records):
            label = f"{source} entry {i}"
            if isinstance(rec, Mapping) and isinstance(rec.get("sensor_id"), str):
                label += f" ({rec['sensor_id']})"
            if not isinstance(rec, Mapping):
                raise ConfigError(f"{label}: must be a JSON object, got {type(rec).__name__}")
            try:
                entries.append(DeviceEntry.model_validate(dict(rec)))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                loc = ".".join(str(p) for p in err["loc"]) or "entry"
                raise ConfigError(f"{label}: {loc}: {err['msg']}") from None
        return cls(tuple(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> DeviceRegistry:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"device registry {p}: cannot read ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"device registry {p}: not valid JSON ({exc})") from None
        if isinstance(data, dict) and isinstance(data.get("devices"), list):
            data = data["devices"]
        if not isinstance(data, list):
            raise ConfigError(f"device registry {p}: expected a JSON list of devices")
        return cls.from_records(data, source=str(p))

    @classmethod
    def sample(cls) -> DeviceRegistry:
        """The registry shipped for the simulated city's demo devices."""
        return cls.from_file(SAMPLE_FILE)

    # ---- lookups: raise RejectedPayload("unknown_device") ------------------

    def by_sensor_id(self, sensor_id: str) -> DeviceEntry:
        try:
            return self._by_sensor[sensor_id]
        except KeyError:
            raise RejectedPayload("unknown_device", f"sensor {sensor_id!r} is not in the device registry") from None

    def find_sensor(self, sensor_id: str) -> DeviceEntry | None:
        """`by_sensor_id` for a question, not a requirement: None when unknown."""
        return self._by_sensor.get(sensor_id)

    def by_name(self, name: str) -> DeviceEntry:
        """A SenML name (bn+n): a sensor id or one of an entry's `names`."""
        try:
            return self._by_name[name]
        except KeyError:
            raise RejectedPayload("unknown_device", f"SenML name {name!r} is not in the device registry") from None

    def by_dev_eui(self, eui: str) -> tuple[DeviceEntry, ...]:
        try:
            return self._by_eui[normalise_eui(eui)]
        except KeyError:
            raise RejectedPayload("unknown_device", f"DevEUI {eui!r} is not in the device registry") from None

    def by_device_id(self, device_id: str) -> tuple[DeviceEntry, ...]:
        try:
            return self._by_device_id[device_id]
        except KeyError:
            raise RejectedPayload("unknown_device", f"device id {device_id!r} is not in the device registry") from None

    def to_records(self) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json", exclude_none=True, exclude_defaults=True) for e in self.entries]


def require_registry(registry: Any) -> DeviceRegistry:
    """The registry a decoder was given, or a rejection saying none was."""
    if not isinstance(registry, DeviceRegistry):
        raise RejectedPayload("unknown_device", "no device registry is configured for this connector")
    return registry


# ---- PostgreSQL, for real deployments -------------------------------------

CREATE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS device_registry (
    sensor_id   text PRIMARY KEY,
    sensor_type text NOT NULL,
    unit        text NOT NULL,
    district    text NOT NULL,
    street      text,
    grid        text,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    dev_eui     text CHECK (dev_eui IS NULL OR dev_eui ~ '^[0-9A-Fa-f]{16}$'),
    device_id   text,
    field       text,
    names       text[] NOT NULL DEFAULT '{}',
    interval_s  integer,
    site        jsonb NOT NULL DEFAULT '{}'::jsonb,
    active      boolean NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS device_registry_dev_eui ON device_registry (upper(dev_eui));
CREATE INDEX IF NOT EXISTS device_registry_device_id ON device_registry (device_id);
"""

SELECT_SQL = """
SELECT sensor_id, sensor_type, unit, district, street, grid, lat, lon,
       dev_eui, device_id, field, names, interval_s, site
FROM device_registry WHERE active ORDER BY sensor_id
"""


def row_to_record(row: Mapping[str, Any]) -> dict[str, Any]:
    site = row.get("site") or {}
    if isinstance(site, str | bytes):
        site = json.loads(site)
    rec: dict[str, Any] = {
        "sensor_id": row["sensor_id"],
        "sensor_type": row["sensor_type"],
        "unit": row["unit"],
        "location": {
            k: row[k] for k in ("district", "street", "grid", "lat", "lon") if row.get(k) is not None
        },
        "names": list(row.get("names") or ()),
        "site": site,
    }
    for k in ("dev_eui", "device_id", "field", "interval_s"):
        if row.get(k) is not None:
            rec[k] = row[k]
    return rec


async def load_from_postgres(conn: Any) -> DeviceRegistry:
    """Read the active rows of `device_registry` through an asyncpg connection."""
    rows: Sequence[Mapping[str, Any]] = await conn.fetch(SELECT_SQL)
    return DeviceRegistry.from_records((row_to_record(r) for r in rows), source="device_registry")
