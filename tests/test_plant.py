"""The bottling-plant simulator: a real OPC UA server (asyncua) whose line fills bottles,
refuses impossible settings, and floods bottles when its level sensor breaks; and the
OPC UA security between it and its clients (Basic256Sha256 Sign & Encrypt, a trust
list on the device, the device's certificate pinned by the client)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256,
    SecurityPolicyBasic256Sha256,
)
from asyncua.ua.uaerrors import BadInvalidArgument, BadUserAccessDenied
from network_helpers import free_port

from twinledger.agent.plant import NAMESPACE, RIM_MM, Plant, PlantError, PlantServer
from twinledger.ingest.opcua import (
    ApplicationIdentity,
    DeviceTrust,
    OpcuaSecurityError,
    application_identity,
    choose_endpoint,
    device_session,
)


def client_identity(directory: Path, name: str = "console") -> ApplicationIdentity:
    return application_identity(directory / name, f"test {name}", f"urn:twinledger:test:{name}", server=False)


def trust(server: PlantServer, identity: ApplicationIdentity) -> None:
    assert server.trust is not None
    shutil.copyfile(identity.path, server.trust.directory / f"{identity.path.parent.name}.der")


def with_plant(tmp_path: Path, work: Callable[[PlantServer, Client, int], Awaitable[Any]]) -> Any:
    """Run ``work(server, client, namespace)`` against a plant served on a free port, over
    a secure session of a client the plant trusts; the server's real-time stepping is
    slowed right down so only the test moves the line."""

    async def run() -> Any:
        server = PlantServer(Plant(seed=3), port=free_port(), rate_hz=0.01, certs=tmp_path / "plant")
        console = client_identity(tmp_path)
        trust(server, console)
        assert server.identity is not None
        async with server, device_session(server.url, console, DeviceTrust(server.identity.path)) as client:
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


def test_the_plant_over_opc_ua(tmp_path) -> None:
    async def work(server: PlantServer, client: Client, ns: int) -> None:
        policy = client.security_policy
        assert (policy.URI, policy.Mode) == (SecurityPolicyAes256Sha256RsaPss.URI, ua.MessageSecurityMode.SignAndEncrypt)

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

    with_plant(tmp_path, work)


def test_without_security_the_simulator_will_not_listen_beyond_loopback(tmp_path) -> None:
    with pytest.raises(PlantError, match="loopback"):
        PlantServer(Plant(), host="0.0.0.0")
    assert PlantServer(Plant(), host="0.0.0.0", certs=tmp_path / "plant").identity is not None


# -- OPC UA security ---------------------------------------------------------------------------


def test_a_client_takes_the_strongest_policy_offered_and_never_sign_only_or_a_deprecated_one(tmp_path) -> None:
    certificate = client_identity(tmp_path, "device").certificate
    sign, both = ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt

    def offer(*endpoints: tuple[Any, ua.MessageSecurityMode]) -> list[ua.EndpointDescription]:
        return [ua.EndpointDescription(SecurityPolicyUri=policy.URI, SecurityMode=mode, ServerCertificate=certificate)
                for policy, mode in endpoints]  # fmt: skip

    everything = offer((SecurityPolicyBasic256Sha256, both), (SecurityPolicyAes128Sha256RsaOaep, both),
                       (SecurityPolicyAes256Sha256RsaPss, both))  # fmt: skip
    assert choose_endpoint(everything, "u") == (SecurityPolicyAes256Sha256RsaPss, certificate)
    assert choose_endpoint(everything[:2], "u")[0] is SecurityPolicyBasic256Sha256
    assert choose_endpoint(everything[1:2], "u")[0] is SecurityPolicyAes128Sha256RsaOaep
    weak = offer((SecurityPolicyAes256Sha256RsaPss, sign), (SecurityPolicyBasic256, both))
    with pytest.raises(OpcuaSecurityError, match="it offers Aes256_Sha256_RsaPss Sign, Basic256 SignAndEncrypt;"):
        choose_endpoint(weak, "u")


async def _read_state(url: str, identity: ApplicationIdentity | None, pin: DeviceTrust | None) -> Any:
    async with device_session(url, identity, pin) as client:
        return await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()


def test_a_client_without_security_gets_no_session_even_if_it_ignores_the_offered_endpoints(tmp_path,
                                                                                           monkeypatch) -> None:  # fmt: skip
    async def run() -> None:
        async with PlantServer(Plant(), port=free_port(), rate_hz=0.01, certs=tmp_path / "plant") as server:
            endpoints = await Client(server.url).connect_and_get_server_endpoints()
            assert {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints} == {
                (SecurityPolicyAes256Sha256RsaPss.URI, ua.MessageSecurityMode.SignAndEncrypt),
                (SecurityPolicyBasic256Sha256.URI, ua.MessageSecurityMode.SignAndEncrypt)}
            with pytest.raises(OpcuaSecurityError, match="offers no endpoint without security"):
                await _read_state(server.url, None, None)
            # a hostile client skips the check and asks for a session on an unsecured channel
            monkeypatch.setattr(Client, "find_endpoint", staticmethod(lambda endpoints, mode, uri: endpoints[0]))
            with pytest.raises(BadUserAccessDenied):
                async with Client(server.url) as hostile:
                    await hostile.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)).read_value()

    asyncio.run(run())


def test_an_untrusted_client_is_refused_until_the_device_trusts_its_certificate(tmp_path) -> None:
    async def run() -> None:
        async with PlantServer(Plant(), port=free_port(), rate_hz=0.01, certs=tmp_path / "plant") as server:
            assert server.identity is not None
            stranger, pin = client_identity(tmp_path, "stranger"), DeviceTrust(server.identity.path)
            with pytest.raises(OpcuaSecurityError, match=f"does not trust this client's certificate "
                                                         f"{stranger.fingerprint}; add {stranger.path}"):  # fmt: skip
                await _read_state(server.url, stranger, pin)
            trust(server, stranger)  # no restart: the trust list is read at every session
            assert await _read_state(server.url, stranger, pin) == ua.ServerState.Running
            (server.trust.directory / "stranger.der").unlink()  # type: ignore[union-attr]
            with pytest.raises(OpcuaSecurityError, match="does not trust"):
                await _read_state(server.url, stranger, pin)

    asyncio.run(run())


def test_a_device_is_pinned_on_first_contact_and_refused_with_another_certificate(tmp_path) -> None:
    console, port = client_identity(tmp_path), free_port()
    pin = DeviceTrust(tmp_path / "pins" / "plant.der", first_use=True)

    async def run(certs: Path) -> Any:
        async with PlantServer(Plant(), port=port, rate_hz=0.01, certs=certs) as server:
            trust(server, console)
            return await _read_state(server.url, console, pin)

    assert asyncio.run(run(tmp_path / "plant")) == ua.ServerState.Running
    genuine = application_identity(tmp_path / "plant", "", "", server=True)
    assert pin.pin.read_bytes() == genuine.certificate
    assert asyncio.run(run(tmp_path / "plant")) == ua.ServerState.Running, "the same device again"
    # another server on the device's address, with a certificate of its own
    with pytest.raises(OpcuaSecurityError, match=f"presents certificate sha256:[0-9a-f]{{64}}, but this client "
                                                 f"trusts {genuine.fingerprint}"):  # fmt: skip
        asyncio.run(run(tmp_path / "impostor"))
    assert pin.pin.read_bytes() == genuine.certificate, "the pin is not replaced"
    pin = DeviceTrust(tmp_path / "impostor" / "opcua.der")  # a certificate file given: never written
    with pytest.raises(OpcuaSecurityError, match=f"presents certificate {genuine.fingerprint}"):
        asyncio.run(run(tmp_path / "plant"))


def test_a_secure_client_does_not_fall_back_to_a_device_without_security(tmp_path) -> None:
    async def run() -> None:
        async with PlantServer(Plant(), port=free_port(), rate_hz=0.01) as server:
            with pytest.raises(OpcuaSecurityError, match="offers no endpoint this client accepts \\(it offers no "
                                                         "security; accepted: Aes256_Sha256_RsaPss, Basic256Sha256"):  # fmt: skip
                await _read_state(server.url, client_identity(tmp_path), DeviceTrust(tmp_path / "pin.der", True))
        assert not (tmp_path / "pin.der").exists()

    asyncio.run(run())
