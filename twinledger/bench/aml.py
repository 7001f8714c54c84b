"""``twinledger bench aml``: what a twin's specification costs at plant size — a 4 MB
CAEX 2.15 plant model shaped like a tool's export (lines of stations instantiating
library classes, a dozen attributes each, ports, links between neighbours, signals with
expected ranges, programs from classes, and a vendor's device catalogue as a class
library of a quarter of the bytes) — created (validated against the XSD, canonicalised,
its model extracted), edited (a station inserted, then removed) and diffed, with the
bytes a version costs on chain and in the store. In the same run, the floor: parsing the
stored bytes and hashing them, which any operation on the document must do at least once."""

from __future__ import annotations

import hashlib
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twinledger import aml
from twinledger.aml.document import parse_xml
from twinledger.aml.libraries import split
from twinledger.bench.ledger import publish
from twinledger.contracts.modeldelta import encode_delta, parse_delta
from twinledger.contracts.twinmodel import model_entries

LIBRARIES = """
<InterfaceClassLib Name="TwinledgerInterfaceClassLib"><InterfaceClass Name="Program"/><InterfaceClass Name="Signal"/>
 <InterfaceClass Name="Port"/></InterfaceClassLib>
<RoleClassLib Name="PlantRoleClassLib"><RoleClass Name="Station"><ExternalInterface Name="Port"
  RefBaseClassPath="TwinledgerInterfaceClassLib/Port"/></RoleClass></RoleClassLib>
<SystemUnitClassLib Name="PlantSystemUnitClassLib">
 <SystemUnitClass Name="Conveyor">
  <ExternalInterface Name="SetVelocity" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">
   <Attribute Name="velocity" AttributeDataType="xs:double" Unit="m/s"><Constraint Name="SafeRange"><OrdinalScaledType>
    <RequiredMaxValue>2.5</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue></OrdinalScaledType></Constraint>
   </Attribute></ExternalInterface>
  <SupportedRoleClass RefRoleClassPath="PlantRoleClassLib/Station"/></SystemUnitClass>
 <SystemUnitClass Name="Robot">
  <ExternalInterface Name="MoveTo" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">
   <Attribute Name="position" AttributeDataType="xs:integer"><Constraint Name="SafeRange"><OrdinalScaledType>
    <RequiredMaxValue>360</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue></OrdinalScaledType></Constraint>
   </Attribute></ExternalInterface>
  <SupportedRoleClass RefRoleClassPath="PlantRoleClassLib/Station"/></SystemUnitClass>
</SystemUnitClassLib>"""
ATTRIBUTES = ("Manufacturer", "Model", "SerialNumber", "OrderNumber", "FirmwareVersion", "RatedVoltage", "RatedCurrent",
              "Weight", "InstallationDate", "Location", "MaintenanceInterval", "SafetyCategory")  # fmt: skip


def station(line: int, number: int) -> str:
    """One station of a line, as an engineering tool exports it."""
    ident = f"l{line}-s{number}"
    kind = "Robot" if number % 3 == 0 else "Conveyor"
    attributes = "".join(f'<Attribute Name="{name}" AttributeDataType="xs:string"><Value>{name}-{ident}</Value>'
                         "</Attribute>" for name in ATTRIBUTES)  # fmt: skip
    return (f'<InternalElement Name="Station{number}" ID="{ident}" RefBaseSystemUnitPath="PlantSystemUnitClassLib/{kind}">'
            f"{attributes}"
            f'<ExternalInterface Name="In" ID="{ident}-in" RefBaseClassPath="TwinledgerInterfaceClassLib/Port"/>'
            f'<ExternalInterface Name="Out" ID="{ident}-out" RefBaseClassPath="TwinledgerInterfaceClassLib/Port"/>'
            f'<ExternalInterface Name="Temperature" ID="{ident}-temperature" '
            'RefBaseClassPath="TwinledgerInterfaceClassLib/Signal"><Attribute Name="Value" AttributeDataType="xs:double" '
            'Unit="degC"><Constraint Name="ExpectedRange"><OrdinalScaledType><RequiredMaxValue>80</RequiredMaxValue>'
            "<RequiredMinValue>5</RequiredMinValue></OrdinalScaledType></Constraint></Attribute></ExternalInterface>"
            '<SupportedRoleClass RefRoleClassPath="PlantRoleClassLib/Station"/></InternalElement>')  # fmt: skip


def catalogue(target_bytes: int) -> str:
    """A vendor's device catalogue as tools embed it: device types with their data."""
    devices, size, number = [], 0, 0
    while size < target_bytes:
        number += 1
        attributes = "".join(f'<Attribute Name="{name}" AttributeDataType="xs:string"><Value>{name} of type {number}'
                             "</Value></Attribute>" for name in ATTRIBUTES)  # fmt: skip
        devices.append(f'<SystemUnitClass Name="DeviceType{number}">{attributes}'
                       '<SupportedRoleClass RefRoleClassPath="PlantRoleClassLib/Station"/></SystemUnitClass>')
        size += len(devices[-1])
    return f'<SystemUnitClassLib Name="VendorCatalogue">{"".join(devices)}</SystemUnitClassLib>'


def plant_model(target_bytes: int, stations_per_line: int = 40) -> bytes:
    """A deterministic CAEX 2.15 plant model of at least ``target_bytes``, a quarter of
    them a device catalogue."""
    lines: list[str] = []
    library = catalogue(target_bytes // 4)
    size, line = len(library), 0
    while size < target_bytes:
        line += 1
        stations = "".join(station(line, n) for n in range(1, stations_per_line + 1))
        links = "".join(f'<InternalLink Name="Belt{n}" RefPartnerSideA="l{line}-s{n}:Out" '
                        f'RefPartnerSideB="l{line}-s{n + 1}:In"/>' for n in range(1, stations_per_line))  # fmt: skip
        lines.append(f'<InternalElement Name="Line{line}" ID="line-{line}">{stations}{links}</InternalElement>')
        size += len(lines[-1])
    return (f'<CAEXFile FileName="plant.aml" SchemaVersion="2.15"><InstanceHierarchy Name="Plant">{"".join(lines)}'
            f"</InstanceHierarchy>{LIBRARIES}{library}</CAEXFile>").encode()  # fmt: skip


def _timed(work: Callable[[], Any], runs: int) -> tuple[Any, float]:
    """The last result and the median seconds of ``runs`` runs."""
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


VERSION_RECORD_BYTES = 32 + 32 + 80 + 8
"""A version's record on chain besides its delta: two hashes, the store reference, the size."""


def run_aml_benchmark(size_mb: float, runs: int, output: Path, as_json: bool) -> dict[str, Any]:
    """Each operation is what the service layer does for it — parse, validate, edit,
    extract the model and the delta the chain takes — and ``contract_check_ms`` is what
    every validator does with a creation's delta."""
    document = plant_model(int(size_mb * 1024 * 1024))

    def create() -> tuple[bytes, aml.Model, bytes]:
        stored, model = aml.stored_with_model(document)
        return stored, model, encode_delta({}, model)

    (stored, model, created), create_s = _timed(create, runs)
    new_station = station(1, 999).encode()

    def edit(change: Callable[[], aml.Edit], old: bytes) -> tuple[aml.Edit, bytes]:
        """The edit, validated, and its delta against the version before (whose model the
        service holds from reading it)."""
        done = change()
        assert done.model is not None
        return done, encode_delta(model_entries(aml.model(old)), done.model)

    (inserted, insert_delta), insert_s = _timed(lambda: edit(lambda: aml.insert(stored, new_station, "line-1", "l1-s1"),
                                                             stored), runs)  # fmt: skip
    (removed, _), remove_s = _timed(lambda: edit(lambda: aml.remove(inserted.specification, "l1-s999"),
                                                 inserted.specification), runs)  # fmt: skip
    change, diff_s = _timed(lambda: aml.diff(stored, inserted.specification), runs)
    _, check_s = _timed(lambda: parse_delta(created), runs)
    _, parse_s = _timed(lambda: parse_xml(stored, "the specification"), runs)
    _, hash_s = _timed(lambda: hashlib.sha256(stored).digest(), runs)
    assert removed.specification == stored, "insert then remove must give the version before"
    (skeleton, libraries), split_s = _timed(lambda: split(inserted.specification), runs)
    ms = 1000
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, Python {platform.python_version()}",
        "input_bytes": len(document), "stored_bytes": len(stored), "components": len(model.objects),
        "programs": len(model.programs), "signals": len(model.signals), "runs": runs,
        "create_ms": round(create_s * ms, 1), "insert_ms": round(insert_s * ms, 1), "remove_ms": round(remove_s * ms, 1),
        "diff_ms": round(diff_s * ms, 1), "diff_lines": len(change.splitlines()),
        "contract_check_ms": round(check_s * ms, 1),
        "floor_parse_ms": round(parse_s * ms, 1), "floor_sha256_ms": round(hash_s * ms, 2),
        "on_chain_bytes_create": len(created) + VERSION_RECORD_BYTES,
        "on_chain_bytes_insert": len(insert_delta) + VERSION_RECORD_BYTES,
        "library_bytes": sum(len(library.data) for library in libraries), "split_ms": round(split_s * ms, 1),
        "off_chain_bytes_create": len(stored), "off_chain_bytes_insert": len(skeleton),
    }  # fmt: skip
    keys = [k for k in result if k != "machine"]
    publish(result, output, as_json, f"AutomationML at plant size ({result['machine']})", keys, [
        ("target (issue 21)", "each operation ≤ 1000 ms on a 4 MB specification"),
        ("Dietz et al. §4.3", "the specification is one string in the contract; no sizes or times reported"),
    ])  # fmt: skip
    return result
