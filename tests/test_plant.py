"""The bottling-plant simulator: a real OPC UA server (asyncua) whose line fills bottles,
refuses impossible settings, and floods bottles when its level sensor breaks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadInvalidArgument

from twinledger.agent.plant import NAMESPACE, RIM_MM, Plant, PlantError, PlantServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_plant(work: Callable[[PlantServer, Client, int], Awaitable[Any]]) -> Any:
    """Run ``work(server, client, namespace)`` against a plant served on a free port; the
    server's real-time stepping is slowed right down so only the test moves the line."""

    async def run() -> Any:
        async with PlantServer(Plant(seed=3), port=free_port(), rate_hz=0.01) as server, Client(server.url) as client:
            return await work(server, client, await client.get_namespace_index(NAMESPACE))

    return asyncio.run(run())


def test_the_model_fills_bottles_at_the_level_the_volume_asks_for() -> None:
    plant = Plant(seed=1)
    plant.step(3.0)  # 1.2 m/s, a bottle every 0.3 m: 12 bottles
    assert plant.bottles_filled == 12 and plant.flooded_bottles == 0
    assert 180 <= plant.level_reading <= 195 and 8 <= plant.flow_reading <= 14
    plant.set_fill_volume(600, valve_check=True)
    plant.step(0.1)
    assert plant.level_reading == pytest.approx(195.0, abs=4)
    plant.set_direction("stop")
    before = plant.bottles_filled
    plant.step(5.0)
    assert plant.bottles_filled == before and plant.flow_reading == 0.0
    for bad in (lambda: plant.set_velocity(-1), lambda: plant.set_velocity(9), lambda: plant.set_direction("back"),
                lambda: plant.set_fill_volume(5000, True), lambda: plant.replace_sensor(plant.level_sensor.serial)):
        with pytest.raises(PlantError):
            bad()


def test_a_broken_level_sensor_reads_low_and_bottles_flood() -> None:
    plant = Plant(seed=2)
    plant.break_sensor()
    plant.step(3.0)
    assert plant.level_reading < 180 and plant.flooded_bottles == 12
    plant.replace_sensor("LS200-9911")
    plant.step(3.0)
    assert 180 <= plant.level_reading <= 195 and plant.flooded_bottles == 12
    assert plant.level_sensor.serial == "LS200-9911" and RIM_MM > 195


def test_the_plant_over_opc_ua() -> None:
    async def work(server: PlantServer, client: Client, ns: int) -> None:
        def node(name: str) -> Any:
            return client.get_node(ua.NodeId(name, ns))

        assert 180 <= await node("level-sensor-1/Level").read_value() <= 195
        assert await node("level-sensor-1/SerialNumber").read_value() == "LS200-7730"
        assert await node("conveyor-1").call_method(ua.NodeId("conveyor-1/SetVelocity", ns), 2.0) is True
        assert await node("conveyor-1/Velocity").read_value() == 2.0
        with pytest.raises(BadInvalidArgument):
            await node("conveyor-1").call_method(ua.NodeId("conveyor-1/SetVelocity", ns), 9.0)
        assert await node("conveyor-1/Velocity").read_value() == 2.0
        await node("filler-1").call_method(ua.NodeId("filler-1/SetFillVolume", ns), ua.Variant(400, ua.VariantType.Int32),
                                           True)  # fmt: skip
        assert await node("filler-1/FillVolume").read_value() == 400

        changes: asyncio.Queue[float] = asyncio.Queue()

        class Handler:
            def datachange_notification(self, _node: Any, value: float, _data: Any) -> None:
                changes.put_nowait(value)

        subscription = await client.create_subscription(50, Handler())
        await subscription.subscribe_data_change(node("level-sensor-1/Level"))
        await asyncio.wait_for(changes.get(), 10)  # the current value
        await node("plant").call_method(ua.NodeId("plant/BreakLevelSensor", ns))
        server.plant.step(3.0)
        await server.publish()
        assert await asyncio.wait_for(changes.get(), 10) < 180
        assert await node("line-1/FloodedBottles").read_value() == 20  # 2 m/s for 3 s
        await node("plant").call_method(ua.NodeId("plant/ReplaceLevelSensor", ns), "LS200-9911")
        assert await node("level-sensor-1/SerialNumber").read_value() == "LS200-9911"

    with_plant(work)


def test_the_simulator_will_not_listen_beyond_loopback() -> None:
    with pytest.raises(PlantError, match="loopback"):
        PlantServer(Plant(), host="0.0.0.0")
