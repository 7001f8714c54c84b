"""Devices of a twin (M3): their own keys, the device-agent role, retirement."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinledger.config import passphrase
from twinledger.contracts import calls
from twinledger.contracts.sharing import DEVICE_RECIPIENT
from twinledger.crypto import kpcpre
from twinledger.crypto.keys import SigningKey, write_secret_file
from twinledger.errors import TwinledgerError
from twinledger.ingest.opcua import agent_identity
from twinledger.services.session import Session


class UnknownDevice(TwinledgerError):
    code = "unknown_device"


def active_device(twin: dict[str, Any], name: str) -> dict[str, Any]:
    """The twin's active device called ``name`` (or with that key, hex)."""
    found = [d for d in twin["devices"] if d["status"] == "active" and name in (d["name"], d["key"])]
    if not found:
        raise UnknownDevice(f"twin {twin['id']} has no active device {name}")
    return dict(found[0])


@dataclass(frozen=True)
class DeviceAdded:
    twin: str
    name: str
    key: str
    recipient: str
    keys: Path
    opcua_certificate: Path
    opcua_fingerprint: str
    block: int


async def add(session: Session, twin_ref: str, name: str, directory: Path) -> DeviceAdded:
    """Make a device's keys (Ed25519 to sign, KP-CPRE to read what it is granted, and the
    agent's OPC UA certificate, which the device must trust) in a new ``directory`` and
    register the device on the twin with the device-agent role."""
    if directory.exists():
        raise TwinledgerError(f"{directory} exists; the device's keys go into a new directory", code="exists")
    signing, sharing = SigningKey.generate(), kpcpre.keygen()
    twin_id, height = await register(session, twin_ref, name, signing.public, sharing.public.to_bytes())
    write_secret_file(directory / "device.key", "ed25519", signing.seed, passphrase())
    write_secret_file(directory / "device-sharing.key", "kpcpre", sharing.to_bytes(), passphrase())
    opcua = agent_identity(directory, signing.public)
    return DeviceAdded(twin_id, name, signing.public.hex(), f"{DEVICE_RECIPIENT}{name}", directory, opcua.path,
                       opcua.fingerprint, height)  # fmt: skip


async def register(session: Session, twin_ref: str, name: str, key: bytes, sharing_key: bytes) -> tuple[str, int]:
    """Register a device whose keys were made where it runs (its Ed25519 and KP-CPRE public
    keys) with the device-agent role; (twin id, block)."""
    twin_id = (await session.twin(twin_ref))["id"]
    outcome = await session.transact(calls.add_device(twin_id, name, key, sharing_key))
    return twin_id, outcome.height


async def retire(session: Session, twin_ref: str, name: str) -> tuple[dict[str, Any], int]:
    """Take a broken or lost device's role and end its grants (proxies forget its keys);
    the device as it was, and the block."""
    device = active_device(await session.twin(twin_ref), name)
    outcome = await session.transact(calls.retire_device(device["twin"], bytes.fromhex(device["key"])))
    return device, outcome.height
