"""The device agent (Dietz et al. §4.4, §5.2): the twin's link to the physical device.

It runs beside its organisation's node, from the node's home, and acts as one of the
twin's *devices* (``twinledger device add``): chain transactions and feed updates carry
the device's own key, so the chain attributes everything it does to it, and its role
(device-agent) bounds what it may change.

What it does, all driven by the twin's AutomationML specification:
- **Streams.** Every *signal* of the specification (``aml.signals``) is a variable on the
  device's OPC UA server. The agent subscribes to each, commits every reading to its
  spool, and appends them to the signal's encrypted feed in the store, which it creates
  and attaches on chain if the signal has none; it checkpoints the feeds' heads on chain.
  While the node is unreachable readings wait in the spool and go out in order
  afterwards.
- **Checks.** Readings outside a signal's expected range raise an alert on chain
  (``AnomalyCheck``); readings back in range clear it.
- **Acts.** Queued program calls are re-checked against the *current* specification's
  safety rules, executed as OPC UA methods, and reported executed, failed or rejected.
- **Notices replacements.** When a component's serial number on the server differs from
  the specification's, the agent replaces the component's entry and its feeds on chain
  (§5.2 steps 1–2), without human help.
- **Follows revocations.** When a grant of the twin ends (revoked, expired, a device
  retired), the twin's access generation rises; the agent gives its feeds a new key of
  that generation before it appends again — also when the grant ended while it was
  stopped — so nothing it writes afterwards opens for the party that lost access.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.ua.uaerrors import UaError

from twinledger import aml
from twinledger.agent.anomaly import AnomalyCheck, Transition
from twinledger.agent.spool import Spool, spool_key
from twinledger.config import NodeConfig
from twinledger.contracts import calls
from twinledger.contracts.calls import ContractCall
from twinledger.contracts.twinmodel import model_of_entries
from twinledger.crypto import kpcpre
from twinledger.errors import TransactionFailed, TwinledgerError
from twinledger.ingest.opcua import (
    ApplicationIdentity,
    DeviceTrust,
    OpcuaSecurityError,
    device_session,
    fingerprint,
    policy_name,
    read_certificate_file,
)
from twinledger.services import feeds, specification, twins
from twinledger.services.access import DeviceKeys
from twinledger.services.session import Session
from twinledger.store.client import StoreClient
from twinledger.store.documents import CapsuleKey
from twinledger.store.feeds import CHECKPOINT_EVERY, FeedWriter, appendable, parse_feed_reference
from twinledger.store.items import FeedUpdate

log = logging.getLogger("twinledger.agent")
NAMESPACE = "urn:twinledger:bottling-plant"
REFRESH_SECONDS = 5.0
"""How often the agent re-reads the twin (specification changes, revocations)."""
CALL_TIMEOUT = 10.0
MAX_RESULT = 4096


@dataclass
class Stream:
    """One signal on its way from the device into its feed."""

    signal: aml.Signal
    writer: FeedWriter
    check: AnomalyCheck
    handed: int = 0
    """The last spool row given to the writer."""
    unchecked: list[tuple[int, float]] = field(default_factory=list)
    """Readings given to the writer that the anomaly check has not seen (it sees them once stored)."""
    recent: deque[FeedUpdate] = field(default_factory=lambda: deque(maxlen=64))

    def sequence_at(self, moment: int) -> int:
        """The update holding the sample at ``moment`` (-1 if not among the recent ones)."""
        return next((u.sequence for u in self.recent if u.first <= moment <= u.last), -1)


@dataclass(frozen=True)
class Sighting:
    """The device reports a component identity the specification does not have."""

    element: str
    model: str
    serial: str
    moment: int


def _micros(moment: datetime | None) -> int:
    if moment is None:
        return time.time_ns() // 1000
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def _variant(parameter: aml.Parameter, value: Any) -> ua.Variant:
    """A checked call parameter as the OPC UA method expects it."""
    kinds = {"number": (float, ua.VariantType.Double), "integer": (int, ua.VariantType.Int32),
             "boolean": (bool, ua.VariantType.Boolean), "string": (str, ua.VariantType.String)}  # fmt: skip
    convert, kind = kinds[parameter.type]
    return ua.Variant(convert(value), kind)


class DeviceAgent:
    def __init__(self, home: Path, config: NodeConfig, device: DeviceKeys, twin: str, opcua_url: str, *,
                 opcua_identity: ApplicationIdentity | None, opcua_trust: DeviceTrust | None = None,
                 namespace: str = NAMESPACE, state_dir: Path | None = None, sampling_ms: int = 50,
                 flush_seconds: float = 1.0, poll_seconds: float = 0.5, checkpoint_every: int = CHECKPOINT_EVERY,
                 say: Callable[[str], None] = log.info) -> None:  # fmt: skip
        self.home = home
        self.config = config
        self.device = device
        self.twin_ref = twin
        self.opcua_url = opcua_url
        self.state_dir = state_dir or home / "agents" / device.signing.public.hex()[:16]
        self.opcua_identity = opcua_identity
        """The agent's OPC UA certificate; None connects without OPC UA security."""
        self.opcua_trust = opcua_trust or DeviceTrust(self.state_dir / "device-opcua.der", first_use=True)
        """The device's certificate: given, or pinned on first contact."""
        self.namespace = namespace
        self.sampling_ms = sampling_ms
        self.flush_seconds = flush_seconds
        self.poll_seconds = poll_seconds
        self.checkpoint_every = checkpoint_every
        self.say = say
        self.spool = Spool(self.state_dir / "spool.db", spool_key(device.signing))
        self.streams: dict[str, Stream] = {}
        """By signal id."""
        self.twin: dict[str, Any] = {}
        self._model: aml.Model | None = None
        self.sharing_public: kpcpre.PublicKey | None = None
        """The owner organisation's public sharing key, read with the twin."""
        self.session: Session | None = None
        self.store: StoreClient | None = None
        self.opcua: Client | None = None
        self.ns = 0
        self.sightings: asyncio.Queue[Sighting] = asyncio.Queue()
        self.reports: list[tuple[str, Transition, int]] = []
        """Anomaly transitions not yet on chain: (signal id, transition, feed sequence)."""
        self.outcomes: list[tuple[dict[str, Any], str, str]] = []
        """Calls run on the device whose outcome is not yet on chain (the node was down)."""
        self._swept = False
        self.refused: set[int] = set()
        """Calls this agent may not handle (another device's scope)."""
        self.connected = False
        self.stats = {"samples": 0, "updates": 0, "dropped": 0, "calls": 0, "alerts": 0, "replacements": 0}
        self._refreshed = 0.0
        self._flushed = 0.0
        self._subscribed: frozenset[str] = frozenset()

    # -- the chain and the store ---------------------------------------------------------------

    @property
    def key_hex(self) -> str:
        return self.device.signing.public.hex()

    async def _connect(self) -> None:
        """(Re)connect to the home's node and the store nodes, wherever they now listen."""
        if self.session is None:
            self.session = Session(self.config, key=self.device.signing, timeout=15.0)
        else:
            await self.session.reconnect()
        self.store = await self.session.store()
        for stream in self.streams.values():
            stream.writer.store = self.store
        await self._refresh(force=True)
        self.connected = True

    async def _get(self, path: str, **params: Any) -> Any:
        assert self.session is not None
        return await self.session.get(path, **params)

    async def transact(self, call: ContractCall) -> dict[str, Any]:
        """Commit a call signed by the device; TransactionFailed if the contract refused it."""
        assert self.session is not None
        view = (await self.session.transact(call)).view
        assert view is not None
        return view

    async def _refresh(self, force: bool = False) -> None:
        """Re-read the twin; reconcile the streams when the specification changed, and give
        the feeds new keys when the twin's access generation moved on."""
        if not force and time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        view = await self._get(f"/v1/twins/{self.twin_ref}")
        changed = view["aml_version"] != self.twin.get("aml_version")
        if changed or self._model is None:
            assert self.session is not None
            self._model = model_of_entries((await specification.model_on_chain(self.session, view["id"]))["entries"])
        self.twin = view
        self.sharing_public = await self.session.sharing_public() if self.session is not None else None
        self._refreshed = time.monotonic()
        if changed:
            await self._open_streams()
        rotated = [signal for signal, stream in self.streams.items() if await stream.writer.follow_generation()]
        if rotated:
            self.say(f"access to the twin changed (generation {view['generation']}): {len(rotated)} feed(s) now use a "
                     "new key")  # fmt: skip

    @property
    def model(self) -> aml.Model:
        """What the agent acts on: the model the chain holds for the twin's current
        specification (programs and rules, OPC UA objects, signals and ranges,
        identities), never a document the chain has not checked."""
        assert self._model is not None, "the twin was read"
        return self._model

    # -- streams -------------------------------------------------------------------------------

    async def _open_streams(self) -> None:
        """A stream for every signal of the specification: its feed attached by this
        device, created and attached if the signal has none (or only a retired device's)."""
        signals = {s.id: s for s in self.model.signals}
        for gone in set(self.streams) - set(signals):
            await self._close_stream(gone)
        feeds = {f["component"]: f for f in self.twin["feeds"]}
        active = {d["key"] for d in self.twin["devices"] if d["status"] == "active"}
        for signal in signals.values():
            if signal.id in self.streams:
                continue
            entry = feeds.get(signal.id)
            if entry is not None and entry["owner"] != self.key_hex:
                if entry["owner"] in active or entry["owner"] not in {d["key"] for d in self.twin["devices"]}:
                    self.say(f"{signal.id}: its feed belongs to another key; not streaming it")
                    continue
                await self.transact(calls.remove_feed(self.twin["id"], signal.id))
                self.say(f"{signal.id}: detached the feed of a retired device")
                entry = None
            feed = parse_feed_reference(entry["reference"]) if entry is not None else await self._new_feed(signal)
            await self._start_stream(signal, feed)

    async def _new_feed(self, signal: aml.Signal) -> bytes:
        assert self.session is not None
        made = await feeds.create_and_attach(self.session, self.twin["id"], signal.id, readers=[self.config.organisation],
                                             description=feeds.signal_description(signal), signal=signal)  # fmt: skip
        assert made.feed is not None
        self.say(f"{signal.id}: new encrypted feed {made.feed.hex()[:16]}… attached on chain ({signal.kind})")
        return made.feed

    async def _start_stream(self, signal: aml.Signal, feed: bytes) -> None:
        assert self.session is not None
        writer = await feeds.open_writer(self.session, self.twin["id"], signal.id, feed, self.checkpoint_every,
                                         self._capsule_key)  # fmt: skip
        if writer.head is not None:
            self.spool.drop_until(signal.opcua_node, writer.head.last)
        open_ = any(a["signal"] == signal.id for a in self.twin.get("anomalies", []))
        self.streams[signal.id] = Stream(signal, writer, AnomalyCheck(signal, open_))

    async def _capsule_key(self) -> CapsuleKey | None:
        """The owner's sharing key and the twin's generation as last read (every REFRESH_SECONDS)."""
        return CapsuleKey(self.sharing_public, int(self.twin["generation"])) if self.sharing_public is not None else None

    async def _close_stream(self, signal_id: str) -> None:
        stream = self.streams.pop(signal_id)
        try:
            await stream.writer.close()
        except TwinledgerError as exc:
            log.warning("closing the feed of %s: %s", signal_id, exc.message)

    async def _flush(self, stream: Stream, before: int | None = None) -> None:
        """Hand the stream's spooled readings (those before ``before``) to its feed; drop
        them from the spool once a write quorum holds them."""
        rows = self.spool.pending(stream.signal.opcua_node, stream.handed)
        if before is not None:
            rows = [r for r in rows if r.time < before]
        if rows:
            samples, dropped = appendable(((r.time, r.value) for r in rows), stream.writer.end)
            if dropped:
                log.warning("%s: %d reading(s) left out of the feed: not a finite number, or not later than the one "
                            "before", stream.signal.id, dropped)  # fmt: skip
                self.stats["dropped"] += dropped
            stream.writer.extend(samples)
            stream.unchecked += samples
            stream.handed = rows[-1].id
        written = await stream.writer.flush()
        if not written:
            return
        stream.recent.extend(written)
        self.spool.drop_through(stream.signal.opcua_node, stream.handed)
        self.stats["samples"] += sum(u.samples for u in written)
        self.stats["updates"] += len(written)
        for transition in stream.check.observe(stream.unchecked):
            self.reports.append((stream.signal.id, transition, stream.sequence_at(transition.since)))
        stream.unchecked = []

    async def _send_reports(self) -> None:
        while self.reports:
            signal, transition, sequence = self.reports[0]
            try:
                await self.transact(calls.report_anomaly(self.twin["id"], signal, transition.state,
                                                         transition.deviation, transition.since, sequence))  # fmt: skip
            except TransactionFailed as exc:
                self.reports.pop(0)
                if exc.code not in ("anomaly_open", "no_anomaly", "unknown_signal"):
                    self.say(f"{signal}: the chain refused the alert: {exc.message}")
                continue
            self.reports.pop(0)
            if transition.state == "raised":
                self.stats["alerts"] += 1
                self.say(f"ALERT {signal}: readings {transition.deviation} the expected range since "
                         f"{datetime.fromtimestamp(transition.since / 1e6, UTC):%H:%M:%S.%f}"[:-3] + " UTC")  # fmt: skip
            else:
                self.say(f"{signal}: readings back in range; alert cleared")

    # -- replacement (§5.2) ----------------------------------------------------------------------

    @property
    def _plan_file(self) -> Path:
        return self.state_dir / "replacement.json"

    async def _replace(self, sighting: Sighting) -> None:
        """Swap the component's specification entry and feeds for the new part's."""
        current = {i.element_id: i for i in self.model.identities}.get(sighting.element)
        if current is None or current.serial == sighting.serial:
            return
        model = await self._read(f"{current.opcua_object}/Model") or current.model
        assert self.session is not None
        document = (await specification.current(self.session, self.twin["id"])).specification  # checked against the chain
        plan = aml.replacement(document, sighting.element, str(model), sighting.serial)
        self.say(f"{sighting.element}: the device reports serial {sighting.serial}, the specification "
                 f"{current.serial}; replacing it by {plan.new}")  # fmt: skip
        for stream in [s for s in self.streams.values() if s.signal.component_id == sighting.element]:
            await self._flush(stream, before=sighting.moment)
            await self._close_stream(stream.signal.id)
        self._plan_file.write_text(json.dumps({**asdict(plan), "fragment": plan.fragment.decode()}))
        await self._carry_out(plan)

    async def _carry_out(self, plan: aml.Replacement) -> None:
        """Each step only if the chain does not show it done yet: a plan interrupted by a
        crash is finished, not repeated, on restart."""
        await self._refresh(force=True)
        ids = {i.element_id for i in self.model.identities}
        twin = self.twin["id"]
        assert self.session is not None
        if plan.old in ids:
            outcome = await twins.remove_aml(self.session, twin, plan.old)
            events = ", ".join(e["type"] for e in outcome.events)
            self.say(f"{plan.old}: removed from the specification ({events})")
        if plan.new not in ids:
            await twins.insert_aml(self.session, twin, plan.fragment, plan.parent, plan.after)
            self.say(f"{plan.new}: inserted into the specification")
        await self._refresh(force=True)
        self._plan_file.unlink(missing_ok=True)
        self.stats["replacements"] += 1

    async def _resume_plan(self) -> None:
        if self._plan_file.exists():
            saved = json.loads(self._plan_file.read_text())
            await self._carry_out(aml.Replacement(**{**saved, "fragment": saved["fragment"].encode()}))

    # -- the device ------------------------------------------------------------------------------

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.ns)

    async def _read(self, name: str) -> Any:
        """A variable's value, or None if the device is unreachable or has no such variable."""
        client = self.opcua
        if client is None:
            return None
        try:
            return await client.get_node(self.node_id(name)).read_value()
        except (UaError, OSError, TimeoutError):
            return None

    async def _device_session(self, stop: asyncio.Event) -> None:
        """Subscribe to the signals and identities; reconnect when the device goes away."""
        refused = ""
        while not stop.is_set():
            retry = 1.0
            pinned = self.opcua_trust.pin.exists()
            try:
                async with device_session(self.opcua_url, self.opcua_identity, self.opcua_trust) as client:
                    refused = ""
                    self.ns = await client.get_namespace_index(self.namespace)
                    watched = await self._subscribe(client)
                    self.opcua = client
                    security = "without OPC UA security" if self.opcua_identity is None else \
                        f"{policy_name(client.security_policy.URI)} Sign & Encrypt"  # fmt: skip
                    self.say(f"connected to the device at {self.opcua_url} ({security}): {watched} variable(s) "
                             "subscribed")  # fmt: skip
                    while not stop.is_set():
                        await client.check_connection()
                        if self._subscribed != self._wanted():
                            break  # the specification's signals changed: subscribe again
                        await _wait(stop, 1.0)
            except OpcuaSecurityError as exc:
                if exc.message != refused:
                    self.say(f"no secure session: {exc.message}; retrying every 5 s")
                refused, retry = exc.message, 5.0
            except Exception as exc:  # noqa: BLE001 - whatever broke the session, the agent reconnects
                self.say(f"the device at {self.opcua_url} is unreachable ({type(exc).__name__}); retrying")
            finally:
                self.opcua = None
                if not pinned and self.opcua_trust.pin.exists():
                    self.say(f"trusting the device's certificate {fingerprint(read_certificate_file(self.opcua_trust.pin))} "
                             f"from now on (first contact; pinned in {self.opcua_trust.pin})")  # fmt: skip
            await _wait(stop, retry)

    def _wanted(self) -> frozenset[str]:
        """The variables the specification asks the agent to watch."""
        if not self.twin:
            return frozenset()
        nodes = {s.opcua_node for s in self.model.signals}
        nodes |= {f"{i.opcua_object}/SerialNumber" for i in self.model.identities}
        return frozenset(nodes)

    async def _subscribe(self, client: Client) -> int:
        agent = self

        class Handler:
            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                agent._on_change(node.nodeid.Identifier, value, data.monitored_item.Value.SourceTimestamp)

        while not self.twin:
            await asyncio.sleep(0.1)
        wanted = self._wanted()
        nodes = []
        for name in sorted(wanted):
            node = client.get_node(self.node_id(name))
            try:
                await node.read_data_type()
            except UaError:
                continue  # not every component reports a serial number
            nodes.append(node)
        subscription = await client.create_subscription(self.sampling_ms, Handler())
        await subscription.subscribe_data_change(nodes, sampling_interval=self.sampling_ms, queuesize=100)
        self._subscribed = wanted
        return len(nodes)

    def _on_change(self, name: str, value: Any, source_time: datetime | None) -> None:
        moment = _micros(source_time)
        if name.endswith("/SerialNumber"):
            obj = name.rsplit("/", 1)[0]
            for identity in self.model.identities if self.twin else []:
                if identity.opcua_object == obj and identity.serial != value:
                    self.sightings.put_nowait(Sighting(identity.element_id, "", str(value), moment))
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        self.spool.add([(name, moment, float(value))])

    # -- program calls -----------------------------------------------------------------------------

    async def _handle_calls(self) -> None:
        """Report what is known, then run what is queued. A call this device had
        dispatched when an earlier run of the agent stopped is reported failed, once."""
        twin = self.twin["id"]
        await self._send_outcomes()
        if not self._swept:
            for call in (await self._get(f"/v1/twins/{twin}/calls", status="dispatched"))["calls"]:
                if call["history"][-1]["key"] == self.key_hex:
                    await self._report(call, "failed", "the agent stopped while executing this call; its outcome on "
                                                       "the device is unknown")  # fmt: skip
            self._swept = True
        for call in (await self._get(f"/v1/twins/{twin}/calls", status="queued"))["calls"]:
            if call["number"] not in self.refused:
                await self._execute(call)

    async def _report(self, call: dict[str, Any], status: str, result: str) -> None:
        await self.transact(calls.report_call(self.twin["id"], call["number"], status, result[:MAX_RESULT]))
        self.stats["calls"] += 1
        self.say(f"call {call['number']} {call['program']}({_params(call['params'])}): {status} — {result}")

    async def _execute(self, call: dict[str, Any]) -> None:
        """Re-check the call against today's specification, then run it on the device."""
        try:
            program = next((p for p in self.model.programs if p.path == call["program"]), None)
            if program is None:
                raise aml.AmlError(f"the specification has no program {call['program']!r} any more")
            params = program.validate_call(call["params"])
            if program.component_id is None or program.component_id not in self.model.objects:
                raise aml.AmlError(f"program {program.path!r} belongs to no component with an OPC UA object")
            obj = self.model.objects[program.component_id]
        except aml.AmlError as exc:
            await self._report(call, "rejected", f"the device agent refused it: {exc.message}")
            return
        if self.opcua is None:
            return  # the device is unreachable: the call waits in the queue
        try:
            await self.transact(calls.dispatch_call(self.twin["id"], call["number"]))
        except TransactionFailed as exc:
            if exc.code == "forbidden":
                self.refused.add(call["number"])
                return
            raise
        client = self.opcua
        try:
            arguments = [_variant(p, params[p.name]) for p in program.parameters]
            answer = await asyncio.wait_for(client.get_node(self.node_id(obj)).call_method(
                self.node_id(f"{obj}/{program.name}"), *arguments), CALL_TIMEOUT)  # fmt: skip
            status, result = "executed", f"the device accepted it ({answer})"
        except UaError as exc:
            status, result = "failed", f"the device refused it: {type(exc).__name__}"
        except (OSError, TimeoutError, ConnectionError):
            status, result = "failed", "the device did not answer"
        self.outcomes.append((call, status, result))
        await self._send_outcomes()

    async def _send_outcomes(self) -> None:
        """Report each outcome; one the node could not take stays for the next round."""
        while self.outcomes:
            await self._report(*self.outcomes[0])
            self.outcomes.pop(0)

    # -- running ---------------------------------------------------------------------------------

    async def _work(self, stop: asyncio.Event) -> None:
        """One loop for everything that touches the chain and the store, so that they
        happen in order: replacements, feeds, alerts, calls."""
        backoff = 1.0
        waiting_since: float | None = None
        while not stop.is_set():
            try:
                if not self.connected:
                    await self._connect()
                    await self._resume_plan()
                    if waiting_since is not None:
                        self.say(f"the node is back after {time.monotonic() - waiting_since:.1f} s; sending "
                                 f"{self.spool.count():,} cached reading(s) in order")  # fmt: skip
                    waiting_since, backoff = None, 1.0
                await self._refresh()
                while not self.sightings.empty():
                    await self._replace(self.sightings.get_nowait())
                if time.monotonic() - self._flushed >= self.flush_seconds:
                    self._flushed = time.monotonic()
                    for stream in list(self.streams.values()):
                        await self._flush(stream)
                await self._send_reports()
                await self._handle_calls()
            except TransactionFailed as exc:
                self.say(f"the chain refused a change: {exc.message}")
            except TwinledgerError as exc:
                if self.connected or waiting_since is None:
                    self.say(f"the node or the store is unreachable ({exc.message[:80]}); caching readings")
                    waiting_since = waiting_since or time.monotonic()
                self.connected = False
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 8.0)
                continue
            await _wait(stop, min(self.flush_seconds, self.poll_seconds))

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set; then send what is cached if the node is reachable."""
        self.say(f"device agent {self.key_hex[:16]}… of twin {self.twin_ref}, state in {self.state_dir}")
        device = asyncio.ensure_future(self._device_session(stop))
        try:
            await self._work(stop)
        finally:
            await device
            await self._shutdown()

    async def _shutdown(self) -> None:
        if self.connected:
            for signal_id in list(self.streams):
                stream = self.streams[signal_id]
                try:
                    await self._flush(stream)
                except TwinledgerError as exc:
                    log.warning("final flush of %s: %s", signal_id, exc.message)
                await self._close_stream(signal_id)
        if self.session is not None:
            await self.session.close()
        self.spool.close()


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):  # not wait_for: on 3.11 it can swallow a cancellation
        async with asyncio.timeout(seconds):
            await stop.wait()
