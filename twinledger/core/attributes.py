"""The attribute vocabulary of KP-CPRE capsules and grant policies, in one place.

Every item the store holds for a twin carries attributes a grant's policy is checked
against: ``twin:ID`` (a grant never reaches past its twin), ``kind:`` (document, record,
sensor, or a signal's kind from the specification), ``component:`` and ``signal:`` from
the AutomationML, ``req`` on external requests, and the owner's own words (type:report).
A capsule also carries ``generation:N``, the twin's access generation when its data key
was made: the chain raises it whenever a grant of the twin ends, and a grant's
re-encryption keys each cover one generation, so a revoked party's keys never cover data
written after its revocation (docs/sharing.md). It describes the key, not the data: an
item's ACL lists its attributes without it. The reserved prefixes are the system's to set; an owner's extra attributes may not use
them, so nobody can label a production counter ``kind:sensor`` by accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from twinledger.errors import TwinledgerError

TWIN = "twin:"
KIND = "kind:"
COMPONENT = "component:"
SIGNAL = "signal:"
GENERATION = "generation:"
GENERATION_NUMBER = re.compile(r"0|[1-9][0-9]{0,8}", re.ASCII)
REQUEST = "req"
"""Marks an external request's capsule (routed by proxies to a device)."""
RESERVED = (TWIN, KIND, COMPONENT, SIGNAL, GENERATION)

DOCUMENT_KIND = "document"
SENSOR_KIND = "sensor"
RECORD_KIND = "record"


class BadAttribute(TwinledgerError):
    """An attribute an owner may not set: wrong form, a reserved prefix, a likely typo."""

    code = "attributes_invalid"


class ReservedAttribute(BadAttribute):
    pass


def twin_attribute(twin_id: str) -> str:
    return f"{TWIN}{twin_id}"


def kind_attribute(kind: str) -> str:
    return f"{KIND}{kind}"


def component_attribute(component: str) -> str:
    return f"{COMPONENT}{component}"


def signal_attribute(signal: str) -> str:
    return f"{SIGNAL}{signal}"


def generation_attribute(generation: int) -> str:
    return f"{GENERATION}{generation}"


def with_generation(attributes: Iterable[str], generation: int) -> list[str]:
    """A capsule's attributes: the item's, and the generation its key was made in."""
    return [*attributes, generation_attribute(generation)]


def generation_of(attributes: Iterable[str]) -> int | None:
    """The generation a capsule's attributes name (None: none, or more than one)."""
    named = [a.removeprefix(GENERATION) for a in attributes if a.startswith(GENERATION)]
    if len(named) != 1 or not GENERATION_NUMBER.fullmatch(named[0]):
        return None
    return int(named[0])


def without_generation(attributes: Iterable[str]) -> tuple[str, ...]:
    return tuple(a for a in attributes if not a.startswith(GENERATION))


def twins_named(attributes: Iterable[str]) -> list[str]:
    """The twin ids ``twin:`` attributes name."""
    return [a.removeprefix(TWIN) for a in attributes if a.startswith(TWIN)]


def owner_attributes(extra: Iterable[str]) -> list[str]:
    """An owner's own attributes, refused if they use a reserved prefix or marker, are not
    KEY:VALUE, or name a key one typing mistake away from a known one (``typ:quality``)."""
    extra = list(extra)
    for attribute in extra:
        if attribute.startswith(RESERVED) or attribute == REQUEST:
            raise ReservedAttribute(f"attribute {attribute[:60]!r} uses a reserved prefix "
                                    f"({', '.join(RESERVED)} and {REQUEST!r} are set by twinledger)")  # fmt: skip
        problem = form_problem(attribute) or near_miss(attribute, KNOWN_KEYS)
        if problem is not None:
            raise BadAttribute(problem)
    return extra


OWNER_KEYS = ("type", "line", "site", "batch", "supplier")
"""Keys the consortium's owners use for their own attributes (docs/sharing.md); others
are allowed, unless one typing mistake away from a known key."""
KNOWN_KEYS = (*(prefix.rstrip(":") for prefix in RESERVED), *OWNER_KEYS)
FORM = re.compile(r"([a-z][a-z0-9_.-]{0,31}):(\S+)", re.ASCII)
"""An attribute: a lower-case KEY, a colon, a VALUE without spaces (type:report)."""
SEPARATOR = re.compile(r"\s*[=.;/: ]\s*")


def form_problem(attribute: str) -> str | None:
    """Why ``attribute`` is not KEY:VALUE, with the likely meant one; None if it is."""
    if attribute == REQUEST or FORM.fullmatch(attribute):
        return None
    shown = attribute[:60]
    if FORM.fullmatch(attribute + "x"):
        return f"attribute {shown!r} has no value after its colon (like type:report)"
    key, _, value = SEPARATOR.sub(":", attribute.strip(), count=1).partition(":")
    fixed = f"{key.lower()}:{value}"
    if FORM.fullmatch(fixed):
        return f"attribute {shown!r} is not KEY:VALUE; did you mean {fixed!r}?"
    for key in KNOWN_KEYS:  # typereport: a known key run into its value
        if attribute.startswith(key) and len(attribute) > len(key) and FORM.fullmatch(f"{key}:{attribute[len(key):]}"):
            return f"attribute {shown!r} is not KEY:VALUE; did you mean '{key}:{attribute[len(key):]}'?"
    return f"attribute {shown!r} is not KEY:VALUE (a lower-case key, a colon, a value without spaces: type:report)"


def near_miss(attribute: str, keys: Iterable[str]) -> str | None:
    """A problem if ``attribute``'s key is not among ``keys`` but one edit away from one."""
    match = FORM.fullmatch(attribute)
    if match is None or match[1] in keys:
        return None
    close = [key for key in keys if _one_edit(match[1], key)]
    if not close:
        return None
    return f"attribute key {match[1]!r} is unknown; did you mean '{close[0]}:{match[2]}'?"


def _one_edit(given: str, known: str) -> bool:
    """Whether ``given`` is ``known`` with one letter left out, or two neighbours swapped —
    the slips of typing. Not a letter changed (size, lane, patch are words of their own)
    nor one added at the end (lines, kind2 are keys of their own)."""
    if len(given) == len(known) - 1:
        return any(known[:i] + known[i + 1 :] == given for i in range(len(known)))
    if len(given) != len(known) or given == known:
        return False
    differ = [i for i in range(len(given)) if given[i] != known[i]]
    return len(differ) == 2 and differ[1] == differ[0] + 1 and given[differ[0]] == known[differ[1]] \
        and given[differ[1]] == known[differ[0]]  # fmt: skip


def document_attributes(twin_id: str, component: str | None, extra: Iterable[str] = ()) -> list[str]:
    return [twin_attribute(twin_id), kind_attribute(DOCUMENT_KIND),
            *([component_attribute(component)] if component else []), *owner_attributes(extra)]  # fmt: skip


def feed_attributes(twin_id: str, component: str, kind: str = SENSOR_KIND, signal: str | None = None,
                    extra: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """A feed's attributes: a signal of the specification gives its own kind and id (the
    device agent's feeds); a feed added by hand is a sensor of its component."""
    return [twin_attribute(twin_id), kind_attribute(kind), component_attribute(component),
            *([signal_attribute(signal)] if signal else []), *owner_attributes(extra)]  # fmt: skip


def record_attributes(twin_id: str | None, extra: Iterable[str] = ()) -> list[str]:
    """An ingest stream's attributes: none without a twin (the records stay private)."""
    if twin_id is None:
        return []
    return [twin_attribute(twin_id), *owner_attributes(extra)]


def request_attributes(twin_id: str, extra: Iterable[str] = ()) -> list[str]:
    return [REQUEST, twin_attribute(twin_id), *owner_attributes(extra)]
