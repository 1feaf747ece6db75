from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from citybrain.errors import ConfigError, RejectedPayload
from connectors.registry import CREATE_TABLE_SQL, DeviceRegistry, load_from_postgres, row_to_record
from schemas import SensorType


def entry(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sensor_id": "bj-cy-pm25-0001",
        "sensor_type": "pm25",
        "unit": "ug/m3",
        "location": {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47},
        "dev_eui": "70b3d57ed005a1c1",
        "device_id": "cb-cy-pm25-0001",
    }
    base.update(over)
    return base


def test_sample_registry_loads_and_covers_several_types_and_districts() -> None:
    reg = DeviceRegistry.sample()
    assert len(reg) >= 8
    assert len({e.sensor_type for e in reg.entries}) >= 6
    assert len({e.location.district for e in reg.entries}) >= 3


def test_lookups_are_case_insensitive_for_eui() -> None:
    reg = DeviceRegistry.from_records([entry()])
    assert reg.by_dev_eui("70B3D57ED005A1C1")[0].sensor_id == "bj-cy-pm25-0001"
    assert reg.by_dev_eui("70-b3-d5-7e-d0-05-a1-c1")[0].dev_eui == "70B3D57ED005A1C1"
    assert reg.by_device_id("cb-cy-pm25-0001")[0].sensor_type is SensorType.PM25
    assert reg.by_name("bj-cy-pm25-0001").sensor_id == "bj-cy-pm25-0001"
    assert reg.by_dev_eui("70b3d57ed005a1c1")[0].fields[0] == "pm25"  # default field: the type's name


@pytest.mark.parametrize(
    "lookup", ["by_dev_eui", "by_device_id", "by_name", "by_sensor_id"],
)
def test_unknown_device_is_rejected_with_reason(lookup: str) -> None:
    reg = DeviceRegistry.from_records([entry()])
    with pytest.raises(RejectedPayload) as err:
        getattr(reg, lookup)("0000000000000000")
    assert err.value.reason == "unknown_device"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (entry(unit="mg/m3"), "unit"),
        (entry(sensor_type="pm2.5"), "sensor_type"),
        (entry(dev_eui="70b3d57ed005a1"), "dev_eui"),
        (entry(location={"district": "朝阳区", "lat": 139.0, "lon": 116.4}), "location.lat"),
        (entry(colour="red"), "colour"),
        (entry(sensor_id="has space"), "sensor_id"),
    ],
)
def test_bad_entries_fail_with_one_line_naming_the_entry(bad: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        DeviceRegistry.from_records([entry(sensor_id="ok-1", dev_eui=None, device_id=None), bad], source="reg.json")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("reg.json entry 1")
    assert needle in msg


def test_duplicates_and_ambiguous_devices_are_refused() -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        DeviceRegistry.from_records([entry(), entry()])
    two = [entry(), entry(sensor_id="bj-cy-pm10-0001", sensor_type="pm10")]
    with pytest.raises(ConfigError, match="distinct 'field'"):
        DeviceRegistry.from_records(two)
    ok = [entry(field="pm25"), entry(sensor_id="bj-cy-pm10-0001", sensor_type="pm10", field="pm10")]
    assert len(DeviceRegistry.from_records(ok).by_dev_eui("70B3D57ED005A1C1")) == 2
    with pytest.raises(ConfigError, match="already"):
        DeviceRegistry.from_records([entry(names=["x"]), entry(sensor_id="y", dev_eui=None, device_id=None, names=["x"])])


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="cannot read"):
        DeviceRegistry.from_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DeviceRegistry.from_file(bad)
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"sensor_id": "x"}))
    with pytest.raises(ConfigError, match="list of devices"):
        DeviceRegistry.from_file(obj)
    good = tmp_path / "good.json"
    good.write_text(json.dumps([entry()]))
    assert len(DeviceRegistry.from_file(good)) == 1


def test_simulator_export_shape_is_accepted() -> None:
    """sim.fleet.registry() adds interval_s and a free-form site."""
    rec = entry(interval_s=60, site={"kind": "underpass", "warning_m": 0.15})
    reg = DeviceRegistry.from_records([rec])
    assert reg.entries[0].site["warning_m"] == 0.15
    assert DeviceRegistry.from_records(reg.to_records()).entries == reg.entries


class _FakeConn:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def fetch(self, sql: str) -> list[dict[str, Any]]:
        assert "FROM device_registry" in sql
        return self.rows


async def test_postgres_loader_maps_rows() -> None:
    assert "CREATE TABLE IF NOT EXISTS device_registry" in CREATE_TABLE_SQL
    row = {
        "sensor_id": "bj-cy-pm25-0001", "sensor_type": "pm25", "unit": "ug/m3",
        "district": "朝阳区", "street": "望京街道", "grid": None, "lat": 39.99, "lon": 116.47,
        "dev_eui": "70b3d57ed005a1c1", "device_id": None, "field": None, "names": [],
        "interval_s": 60, "site": '{"kind": "roadside"}',
    }  # fmt: skip
    assert row_to_record(row)["location"] == {"district": "朝阳区", "street": "望京街道", "lat": 39.99, "lon": 116.47}
    reg = await load_from_postgres(_FakeConn([row]))
    assert reg.by_dev_eui("70B3D57ED005A1C1")[0].site == {"kind": "roadside"}


def test_the_simulators_exported_registry_loads() -> None:
    from sim.fleet import build_city, registry

    records = registry(build_city(7, sensors=60))
    reg = DeviceRegistry.from_records(records, source="sim")
    first = records[0]
    assert reg.by_dev_eui(first["dev_eui"].lower())[0].sensor_id == first["sensor_id"]
    assert reg.by_device_id(first["device_id"])[0].sensor_id == first["sensor_id"]
