"""Program calls and alerts: the methods of the ``twins`` contract that face the device.

A call names a program by its full component path and passes the specification's safety
rules before it is queued; it goes ``queued → dispatched → executed | failed``, or
``rejected`` by the device agent or the owner, and records where its program was so it
can be settled there even after the component went. An alert says a signal left (or is
back in) the range the specification expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twinledger.contracts.arguments import Arguments
from twinledger.contracts.authorization import authorize
from twinledger.contracts.runtime import Call
from twinledger.contracts.twinmodel import element_path, find_program, find_signal
from twinledger.contracts.twinstate import (
    MAX_REFERENCE,
    TwinError,
    actor,
    anomaly_key,
    call_key,
    load_twin,
    twin_key,
)

MAX_PARAMS = 64
MAX_RESULT = 4096
CALL_OUTCOMES = ("executed", "failed", "rejected")


# -- program calls --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramCall:
    twin: str
    program: str
    params: dict[str, Any]


def parse_call_program(args: Mapping[str, Any]) -> ProgramCall:
    read = Arguments("twins.call_program", args, ("twin", "program", "params"))
    params = read.mapping("params", max_items=MAX_PARAMS, default={})
    for name, value in params.items():
        if not isinstance(value, (bool, int, str)) or (isinstance(value, str) and len(value) > 256):
            raise read.error(f"parameter {name[:40]!r} must be a boolean, an integer or a short string")
    return ProgramCall(read.identifier("twin"), read.reference("program", max_length=MAX_REFERENCE), params)


def call_program(call: Call, args: ProgramCall) -> None:
    """Queue a program call for the device agent once the AML's safety rules allow it."""
    twin = load_twin(call.state, args.twin)
    program = find_program(call.state, twin["id"], args.program)
    scope = element_path(call.state, twin["id"], program.target or "") or ()
    authorize(call, twin, "program.call", program.target)
    params = program.validate_call(args.params)
    number = twin["calls"] + 1
    call.state.set(twin_key(args.twin), {**twin, "calls": number})
    call.state.set(call_key(args.twin, number), {
        "number": number, "program": program.path, "interface": program.id, "component": program.component_id or "",
        "params": params, "status": "queued", "result": "", "caller": call.sender, "scope": list(scope),
        "history": [{"status": "queued", **actor(call)}],
    })  # fmt: skip
    call.emit("ProgramCalled", twin=args.twin, call=number, program=program.path, params=params)


@dataclass(frozen=True)
class CallUpdate:
    twin: str
    number: int
    status: str
    result: str


def parse_dispatch(args: Mapping[str, Any]) -> CallUpdate:
    read = Arguments("twins.dispatch_call", args, ("twin", "call"))
    return CallUpdate(read.identifier("twin"), read.integer("call", minimum=1), "dispatched", "")


def parse_report(args: Mapping[str, Any]) -> CallUpdate:
    read = Arguments("twins.report_call", args, ("twin", "call", "status", "result"))
    return CallUpdate(read.identifier("twin"), read.integer("call", minimum=1), read.choice("status", CALL_OUTCOMES),
                      read.text("result", max_length=MAX_RESULT, empty=True, default=""))  # fmt: skip


TRANSITIONS = {"dispatched": ("queued",), "executed": ("dispatched",), "failed": ("dispatched",),
               "rejected": ("queued", "dispatched")}  # fmt: skip


def update_call(call: Call, args: CallUpdate) -> None:
    """Move a call along its life-cycle; only the transitions in TRANSITIONS exist."""
    twin = load_twin(call.state, args.twin)
    entry = call.state.get(call_key(args.twin, args.number))
    if entry is None:
        raise TwinError(f"twin {args.twin} has no program call {args.number}", code="unknown_call")
    method = "program.dispatch" if args.status == "dispatched" else "program.report"
    scope = entry.get("scope")  # where it was when called: it may be gone since (calls from before: their target)
    authorize(call, twin, method, *((None, tuple(scope)) if scope is not None else
                                    (entry["interface"] or entry["component"] or None, None)))  # fmt: skip
    if entry["status"] not in TRANSITIONS[args.status]:
        raise TwinError(f"program call {args.number} is {entry['status']}; it cannot become {args.status}",
                        code="bad_transition")  # fmt: skip
    call.state.set(call_key(args.twin, args.number), {
        **entry, "status": args.status, "result": args.result or entry["result"],
        "history": [*entry["history"], {"status": args.status, **actor(call)}],
    })  # fmt: skip
    call.emit("ProgramCallUpdated", twin=args.twin, call=args.number, program=entry["program"], status=args.status,
              result=args.result)  # fmt: skip


# -- anomalies ------------------------------------------------------------------------------------

ANOMALY_STATES = ("raised", "cleared")
DEVIATIONS = ("below", "above")


@dataclass(frozen=True)
class AnomalyReport:
    twin: str
    signal: str
    state: str
    deviation: str
    since: int
    """Microseconds since the epoch: the first reading out of (or back in) range."""
    sequence: int
    """The feed update holding that reading (-1: not yet in the feed)."""


def parse_report_anomaly(args: Mapping[str, Any]) -> AnomalyReport:
    read = Arguments("twins.report_anomaly", args, ("twin", "signal", "state", "deviation", "since", "sequence"))
    state = read.choice("state", ANOMALY_STATES)
    deviation = read.choice("deviation", DEVIATIONS) if state == "raised" else ""
    return AnomalyReport(read.identifier("twin"), read.reference("signal", max_length=128), state, deviation,
                         read.integer("since", minimum=0), read.integer("sequence", minimum=-1, default=-1))  # fmt: skip


def report_anomaly(call: Call, args: AnomalyReport) -> None:
    """Raise an alert when a signal leaves the range its specification expects (Dietz et
    al. §4.3), or clear it when readings are back. The alert names the range and the feed
    update, not the reading: values stay in the encrypted feed, for those it is shared with."""
    twin = load_twin(call.state, args.twin)
    signal = find_signal(call.state, twin["id"], args.signal)
    if signal is None:
        raise TwinError(f"the specification has no signal {args.signal!r}", code="unknown_signal")
    authorize(call, twin, "anomaly.report", signal.id)
    key = anomaly_key(args.twin, signal.id)
    current = call.state.get(key)
    if args.state == "raised":
        if current is not None:
            raise TwinError(f"signal {signal.id!r} already has an open anomaly", code="anomaly_open")
        expected = {"minimum": "" if signal.minimum is None else f"{signal.minimum:g}",
                    "maximum": "" if signal.maximum is None else f"{signal.maximum:g}", "unit": signal.unit or ""}  # fmt: skip
        call.state.set(key, {"signal": signal.id, "component": signal.component_id, "deviation": args.deviation,
                             "since": args.since, "sequence": args.sequence, **expected, "raised": actor(call)})  # fmt: skip
        call.emit("AnomalyRaised", twin=args.twin, signal=signal.id, component=signal.component_id,
                  deviation=args.deviation, since=args.since, sequence=args.sequence, **expected)  # fmt: skip
        return
    if current is None:
        raise TwinError(f"signal {signal.id!r} has no open anomaly to clear", code="no_anomaly")
    call.state.set(key, None)
    call.emit("AnomalyCleared", twin=args.twin, signal=signal.id, reason="back in range", since=args.since,
              sequence=args.sequence)  # fmt: skip
