"""The bottling plant of ``examples/bottling-plant.aml`` as a real OPC UA server (asyncua),
for the demo and the tests (Dietz et al. §5).

The line fills bottles: the conveyor brings them at its velocity, the filler's twelve
valves fill each to the chosen volume, and it stops a bottle when the fill-level sensor
reads the level that volume should reach. The flow sensor measures what the valves
deliver. A fault switch breaks the level sensor: it reads a constant low level, the
filler keeps filling, and bottles flood (their real level passes the rim). Replacing
the sensor puts a new one, with a new serial number, in its place.

The model is time-stepped and deterministic for a seed: ``Plant.step(seconds)`` moves
it on, and the server steps it in real time. Node ids are strings in the plant's
namespace, named by the AML element ID: ``level-sensor-1/Level``,
``conveyor-1/SetVelocity``, ``line-1/FloodedBottles``.

Given a directory for its certificates, the server offers Sign & Encrypt only
(Aes256_Sha256_RsaPss and Basic256Sha256), and lets in the clients whose certificates
are in the directory's ``trusted/`` (``ingest/opcua.py``). Without one it runs without
OPC UA security, and then only on a loopback address.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Server, ua

from twinledger.errors import TwinledgerError
from twinledger.ingest.opcua import SERVER_POLICIES, ApplicationIdentity, TrustList, application_identity

NAMESPACE = "urn:twinledger:bottling-plant"
RIM_MM = 200.0
"""A bottle overflows above this level."""
LEVEL_PER_ML = 0.075
BASE_LEVEL_MM = 150.0
BROKEN_LEVEL_MM = 120.0
MAX_VELOCITY = 5.0
BOTTLE_SPACING_M = 0.3


class PlantError(TwinledgerError):
    code = "plant"


@dataclass
class LevelSensor:
    model: str
    serial: str
    broken: bool = False


@dataclass
class Plant:
    """The line's physical state; every reading comes from here."""

    seed: int = 7
    velocity: float = 1.2
    direction: str = "forward"
    fill_volume: int = 500
    valves: int = 12
    torque: float = 2.1
    level_sensor: LevelSensor = field(default_factory=lambda: LevelSensor("LS-200", "LS200-7730"))
    level_reading: float = 0.0
    flow_reading: float = 0.0
    bottles_filled: int = 0
    flooded_bottles: int = 0
    time: float = 0.0
    distance: float = 0.0
    """Metres the conveyor has moved: a bottle every BOTTLE_SPACING_M."""
    _random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._random.seed(self.seed)
        self.step(0.0)

    @property
    def target_level(self) -> float:
        """The level the chosen volume reaches in a bottle (mm)."""
        return BASE_LEVEL_MM + LEVEL_PER_ML * self.fill_volume

    @property
    def running(self) -> bool:
        return self.direction == "forward" and self.velocity > 0

    def step(self, seconds: float) -> None:
        """Move the line on by ``seconds``: bottles arrive, are filled and leave."""
        self.time += seconds
        noise = self._random.gauss
        real_level = self.target_level if not self.level_sensor.broken else RIM_MM + 15.0
        self.level_reading = round((BROKEN_LEVEL_MM if self.level_sensor.broken else real_level) + noise(0, 0.8), 3)
        flow = 0.9 * self.valves * (self.velocity / 1.2) if self.running else 0.0
        self.flow_reading = round(max(0.0, flow + noise(0, 0.2)), 3)
        if not self.running:
            return
        self.distance += seconds * self.velocity
        arrived = int(self.distance / BOTTLE_SPACING_M + 1e-9) - self.bottles_filled
        self.bottles_filled += arrived
        if real_level > RIM_MM:
            self.flooded_bottles += arrived

    def set_velocity(self, velocity: float) -> None:
        if not 0 <= velocity <= MAX_VELOCITY:
            raise PlantError(f"the conveyor runs at 0 to {MAX_VELOCITY} m/s, not {velocity}")
        self.velocity = velocity

    def set_direction(self, direction: str) -> None:
        if direction not in ("forward", "stop"):
            raise PlantError(f"the conveyor goes forward or stops, not {direction!r}")
        self.direction = direction

    def set_fill_volume(self, volume: int, valve_check: bool) -> None:
        if not 100 <= volume <= 1500:
            raise PlantError(f"the filler fills 100 to 1500 ml, not {volume}")
        if valve_check and self.valves < 1:
            raise PlantError("the valve check failed")
        self.fill_volume = volume

    def break_sensor(self) -> None:
        self.level_sensor.broken = True

    def replace_sensor(self, serial: str) -> None:
        if not serial or serial == self.level_sensor.serial:
            raise PlantError("a replacement sensor has a serial number of its own")
        self.level_sensor = LevelSensor(self.level_sensor.model, serial)


def plant_identity(directory: Path) -> ApplicationIdentity:
    return application_identity(directory, "twinledger bottling plant", "urn:twinledger:bottling-plant", server=True)


class PlantServer:
    """Serves a ``Plant`` over OPC UA and steps it in real time; with ``certs``, a
    directory for its certificate and trust list, over OPC UA Sign & Encrypt."""

    def __init__(self, plant: Plant, host: str = "127.0.0.1", port: int = 4840, rate_hz: float = 20.0,
                 certs: Path | None = None) -> None:  # fmt: skip
        if certs is None and host not in ("127.0.0.1", "::1", "localhost"):
            raise PlantError("without OPC UA security the plant simulator listens on a loopback address only; "
                             "give it a certificate directory")  # fmt: skip
        self.plant = plant
        self.url = f"opc.tcp://{host}:{port}/twinledger/plant/"
        self.rate_hz = rate_hz
        self.identity = plant_identity(certs) if certs is not None else None
        self.trust = TrustList(certs / "trusted") if certs is not None else None
        self._server = Server(user_manager=self.trust)
        self._nodes: dict[str, tuple[Any, ua.VariantType]] = {}
        self._task: asyncio.Task[None] | None = None
        self.namespace = 0

    async def start(self) -> None:
        server = self._server
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("twinledger bottling plant")
        if self.identity is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            server.set_security_policy(SERVER_POLICIES)
            server.set_identity_tokens([ua.AnonymousIdentityToken])
            server.set_certificate_validator(self.trust)
            await server.set_application_uri(self.identity.uri)
            await server.load_certificate(self.identity.certificate, "der")
            await server.load_private_key(self.identity.private_key, None, "der")
        self.namespace = await server.register_namespace(NAMESPACE)
        await self._build()
        await server.start()
        await self.publish()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._server.stop()

    async def __aenter__(self) -> PlantServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.namespace)

    async def _build(self) -> None:
        plant, ns = self.plant, self.namespace
        objects = self._server.nodes.objects
        line = await objects.add_object(self.node_id("line-1"), ua.QualifiedName("BottlingLine1", ns))
        conveyor = await line.add_object(self.node_id("conveyor-1"), ua.QualifiedName("Conveyor", ns))
        filler = await line.add_object(self.node_id("filler-1"), ua.QualifiedName("Filler", ns))
        level = await filler.add_object(self.node_id("level-sensor-1"), ua.QualifiedName("FillLevelSensor1", ns))
        flow = await filler.add_object(self.node_id("flow-sensor-1"), ua.QualifiedName("FlowSensor1", ns))
        capper = await line.add_object(self.node_id("capper-1"), ua.QualifiedName("Capper", ns))
        status = await objects.add_object(self.node_id("plant"), ua.QualifiedName("Plant", ns))
        variables = [
            (conveyor, "conveyor-1/Velocity", "Velocity", ua.VariantType.Double),
            (conveyor, "conveyor-1/Direction", "Direction", ua.VariantType.String),
            (filler, "filler-1/FillVolume", "FillVolume", ua.VariantType.Int32),
            (filler, "filler-1/Valves", "Valves", ua.VariantType.Int32),
            (level, "level-sensor-1/Level", "Level", ua.VariantType.Double),
            (level, "level-sensor-1/Model", "Model", ua.VariantType.String),
            (level, "level-sensor-1/SerialNumber", "SerialNumber", ua.VariantType.String),
            (flow, "flow-sensor-1/Flow", "Flow", ua.VariantType.Double),
            (capper, "capper-1/Torque", "Torque", ua.VariantType.Double),
            (line, "line-1/BottlesFilled", "BottlesFilled", ua.VariantType.Int64),
            (line, "line-1/FloodedBottles", "FloodedBottles", ua.VariantType.Int64),
        ]
        values = self._values()
        for parent, node, name, kind in variables:
            created = await parent.add_variable(self.node_id(node), ua.QualifiedName(name, ns), values[node], kind)
            self._nodes[node] = (created, kind)

        def guarded(action: Any) -> Any:
            """An OPC UA method: a refused value answers BadInvalidArgument, not an internal error."""

            async def method(parent: ua.NodeId, *arguments: ua.Variant) -> Any:
                try:
                    action(*(argument.Value for argument in arguments))
                except (PlantError, TypeError):
                    return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
                await self.publish()
                return [ua.Variant(True, ua.VariantType.Boolean)]

            return method

        methods = [
            (conveyor, "conveyor-1/SetVelocity", "SetVelocity", plant.set_velocity, [ua.VariantType.Double]),
            (conveyor, "conveyor-1/SetDirection", "SetDirection", plant.set_direction, [ua.VariantType.String]),
            (filler, "filler-1/SetFillVolume", "SetFillVolume", plant.set_fill_volume,
             [ua.VariantType.Int32, ua.VariantType.Boolean]),
            (status, "plant/BreakLevelSensor", "BreakLevelSensor", plant.break_sensor, []),
            (status, "plant/ReplaceLevelSensor", "ReplaceLevelSensor", plant.replace_sensor, [ua.VariantType.String]),
        ]  # fmt: skip
        for parent, node, name, action, inputs in methods:
            await parent.add_method(self.node_id(node), ua.QualifiedName(name, ns), guarded(action), inputs,
                                    [ua.VariantType.Boolean])  # fmt: skip

    def _values(self) -> dict[str, Any]:
        plant = self.plant
        return {
            "conveyor-1/Velocity": plant.velocity, "conveyor-1/Direction": plant.direction,
            "filler-1/FillVolume": plant.fill_volume, "filler-1/Valves": plant.valves,
            "level-sensor-1/Level": plant.level_reading, "level-sensor-1/Model": plant.level_sensor.model,
            "level-sensor-1/SerialNumber": plant.level_sensor.serial, "flow-sensor-1/Flow": plant.flow_reading,
            "capper-1/Torque": plant.torque, "line-1/BottlesFilled": plant.bottles_filled,
            "line-1/FloodedBottles": plant.flooded_bottles,
        }  # fmt: skip

    async def publish(self) -> None:
        """Write the plant's state into the address space (subscribers get the changes)."""
        for name, value in self._values().items():
            node, kind = self._nodes[name]
            await node.write_value(ua.Variant(value, kind))

    async def _run(self) -> None:
        period = 1.0 / self.rate_hz
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            self.plant.step(now - last)
            last = now
            await self.publish()
