"""Edits of a specification that keep it valid CAEX: an element inserted where its
schema's sequence puts it, an element removed together with — or refused because of —
what still points at it, and readable diffs between versions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lxml import etree

from twinledger.aml.document import AmlError, by_path, canonical, describe, local, parse_xml, rank, structure
from twinledger.aml.semantics import Model, name_path, opcua_object, validate

LINK_POLICIES = ("refuse", "remove")
CLASS_KINDS = frozenset({"SystemUnitClass", "RoleClass", "InterfaceClass", "AttributeType"})
CLASS_REFERENCES = ("RefBaseSystemUnitPath", "RefBaseClassPath", "RefBaseRoleClassPath", "RefRoleClassPath",
                    "RefAttributeType")  # fmt: skip


def find(root: etree._Element, ref: str, purpose: str = "") -> etree._Element:
    """The element with ID ``ref``, else the one the name path ``ref`` names
    (``Plant/Line1/Conveyor``: an instance hierarchy or library, then its children)."""
    if not ref.isprintable():
        raise AmlError(f"{ref[:64]!r} is not an element's ID or path: it has unprintable characters",
                       code="unknown_element")  # fmt: skip
    by_id = next((e for e in structure(root) if e.get("ID") == ref), None)  # instance hierarchies come first: they win
    by_name = by_path(root, ref)
    if by_id is not None and by_name is not None and by_id is not by_name:
        raise AmlError(f"{ref!r} is both an element's ID and another element's path; name the other one by its ID",
                       code="ambiguous_element")  # fmt: skip
    if by_id is None and by_name is None:
        raise AmlError(f"no element with ID or path {ref!r}{purpose}", code="unknown_element")
    return by_id if by_id is not None else by_name  # type: ignore[return-value]


def component_path(root: etree._Element, ref: str) -> tuple[str, ...]:
    """IDs of the element ``ref`` names and of its ancestors that carry one, outermost first."""
    return id_path(find(root, ref))


def id_path(element: etree._Element) -> tuple[str, ...]:
    """IDs of an instance hierarchy's element and of its ancestors that carry one,
    outermost first — what role scopes are matched against. Empty outside the instance
    hierarchies: a library's IDs may repeat an instance's, so no scope reaches a class."""
    chain = [element, *element.iterancestors()]
    if len(chain) < 2 or local(chain[-2]) != "InstanceHierarchy":
        return ()
    return tuple(reversed([i for e in chain if (i := e.get("ID"))]))


@dataclass(frozen=True)
class Edit:
    """A changed specification and what the change touched."""

    specification: bytes
    element: str
    """ID (else name path) of the inserted or removed element."""
    ids: tuple[str, ...]
    """IDs of that element and everything inside it, in document order."""
    links: tuple[str, ...] = ()
    """InternalLinks elsewhere removed with it (name: partner → partner)."""
    link_holders: tuple[tuple[str, ...], ...] = ()
    """Where each of those links was (``id_path`` of the element holding it): a change
    there too, for authorization."""
    model: Model | None = None
    """The changed specification's model, worked out when it was validated."""


def reference(element: etree._Element) -> str:
    """How an element is addressed: its ID, else its name path."""
    if element.get("ID"):
        return element.get("ID") or ""
    if element.get("Name") is not None:
        return name_path(element)
    parent = element.getparent()
    return f"{reference(parent)}/<{local(element)}>" if parent is not None else local(element)


def _adopt(fragment: etree._Element, namespace: str | None) -> None:
    """A fragment written without a namespace joins a CAEX 3.0 document's namespace."""
    if namespace is None:
        return
    for element in fragment.iter(etree.Element):
        if etree.QName(element).namespace is None:
            element.tag = f"{{{namespace}}}{element.tag}"
    etree.cleanup_namespaces(fragment)


def insert(specification: bytes, fragment: bytes, parent: str, after: str | None = None) -> Edit:
    """The specification with ``fragment`` (one element) under ``parent``: after its child
    ``after``, else first among the parent's children of its kind — where the schema's
    sequence puts it (after Attributes and interfaces, before SupportedRoleClass and
    InternalLinks). The result is validated as a whole."""
    root = parse_xml(specification, "the specification")
    element = parse_xml(fragment, "the fragment")
    _adopt(element, etree.QName(root).namespace)
    holder = find(root, parent, " to insert under")
    if after is None:
        kind = rank(local(element))
        holder.insert(next((i for i, c in enumerate(holder) if rank(local(c)) >= kind), len(holder)), element)
    else:
        sibling = find(root, after, " to insert after")
        if sibling.getparent() is not holder:
            raise AmlError(f"{after!r} is not a child of {parent!r}")
        sibling.addnext(element)
        following = element.getnext()
        if rank(local(sibling)) > rank(local(element)) or (following is not None and
                                                           rank(local(following)) < rank(local(element))):  # fmt: skip
            raise AmlError(f"CAEX puts <{local(element)}> before <{local(sibling)}>; it cannot follow {after!r}")
    for inserted in element.iter(etree.Element):  # errors name the stored version's lines, not the fragment's
        inserted.sourceline = holder.sourceline
    try:
        model = validate(root)
    except AmlError as exc:
        raise AmlError(f"inserting <{local(element)}> under {describe(holder)}: {exc}", code=exc.code) from None
    return Edit(canonical(root), reference(element), _ids(element), model=model)


def _ids(element: etree._Element) -> tuple[str, ...]:
    return tuple(i for e in structure(element) if (i := e.get("ID")))


def _partner_names(inside: list[etree._Element]) -> set[str]:
    """How links name the interfaces among ``inside``: the interface's ID (CAEX 3.0) and
    ``OwnerID:InterfaceName`` (2.15), whether or not the owner goes too."""
    names: set[str] = set()
    for interface in (e for e in inside if local(e) == "ExternalInterface"):
        if interface.get("ID"):
            names.add(interface.get("ID") or "")
        owner = interface.getparent()
        if owner is not None and owner.get("ID"):
            names.add(f"{owner.get('ID')}:{interface.get('Name')}")
    return names


def _context(element: etree._Element) -> etree._Element | None:
    """Where links can reach ``element`` from: its class, else its instance hierarchies."""
    for ancestor in element.iterancestors():
        if local(ancestor) == "SystemUnitClass":
            return ancestor
    return None


def remove(specification: bytes, ref: str, links: str = "refuse") -> Edit:
    """The specification without the element ``ref`` and everything inside it. InternalLinks
    elsewhere that point into it are refused (``links="refuse"``) or removed with it
    (``"remove"``); a class still used elsewhere is refused."""
    if links not in LINK_POLICIES:
        raise AmlError(f"links must be one of {list(LINK_POLICIES)}, not {links!r}")
    root = parse_xml(specification, "the specification")
    element = find(root, ref, " to remove")
    holder = element.getparent()
    if holder is None:
        raise AmlError("the root cannot be removed")
    subtree = list(structure(element))
    inside = set(subtree)
    _check_class_users(root, element, inside)
    partners = _partner_names(subtree)
    context = _context(element)
    candidates = structure(context) if context is not None else (
        e for h in root if local(h) == "InstanceHierarchy" for e in structure(h))  # fmt: skip
    dangling = [link for link in candidates if local(link) == "InternalLink" and link not in inside
                and (link.get("RefPartnerSideA") in partners or link.get("RefPartnerSideB") in partners)]  # fmt: skip
    if dangling and links == "refuse":
        names = ", ".join(repr(link.get("Name")) for link in dangling[:5])
        raise AmlError(f"{len(dangling)} InternalLink(s) elsewhere point into {ref!r} ({names}); remove them first "
                       "or remove the element with its links", code="linked_element")  # fmt: skip
    removed = tuple(f"{link.get('Name')}: {link.get('RefPartnerSideA')} → {link.get('RefPartnerSideB')}"
                    for link in dangling)  # fmt: skip
    holders = tuple(id_path(link.getparent()) for link in dangling)
    for link in dangling:
        link.getparent().remove(link)
    holder.remove(element)
    model = validate(root)
    return Edit(canonical(root), reference(element) if element.get("ID") else ref, _ids(element), removed, holders,
                model)  # fmt: skip


def _check_class_users(root: etree._Element, element: etree._Element, inside: set[etree._Element]) -> None:
    """Refuse removing a class (or a library of them) that an element kept refers to."""
    classes = {ref for e in inside if local(e) in CLASS_KINDS for ref in (name_path(e), e.get("ID")) if ref}
    if not classes:
        return
    for user in structure(root):
        if user in inside:
            continue
        used = next((user.get(a) for a in CLASS_REFERENCES if user.get(a) in classes), None)
        if used is not None:
            raise AmlError(f"{describe(user)} still refers to {used!r}, which the removal would take away",
                           code="class_in_use")  # fmt: skip


def diff(old: bytes, new: bytes, old_label: str = "before", new_label: str = "after") -> str:
    """A readable unified diff of two specifications, one element per line. Lines both
    share at the start and end are set aside first, so a small change in a large
    specification costs little more than reading it."""

    def lines(data: bytes) -> list[str]:
        root = parse_xml(data, "the specification")
        etree.indent(root, space="  ")
        return etree.tostring(root, encoding="unicode").splitlines()

    a, b = lines(old), lines(new)
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    context = 3
    start = max(0, head - context)
    a_mid, b_mid = a[start:len(a) - max(0, tail - context)], b[start:len(b) - max(0, tail - context)]
    hunks = difflib.unified_diff(a_mid, b_mid, old_label, new_label, lineterm="", n=context)
    return "\n".join(_shift(line, start) for line in hunks)


def _shift(line: str, offset: int) -> str:
    """A hunk header of a diff of slices, renumbered for the whole documents."""
    if not offset or not line.startswith("@@ "):
        return line
    _, old, new, _rest = line.split(" ", 3)

    def moved(part: str) -> str:
        start, _, count = part[1:].partition(",")
        return f"{part[0]}{int(start) + offset}" + (f",{count}" if count else "")

    return f"@@ {moved(old)} {moved(new)} @@"


# -- replacing a component ------------------------------------------------------------------------


@dataclass(frozen=True)
class Replacement:
    """How to swap a component for a new one of its kind: remove ``old``, insert
    ``fragment`` under ``parent`` after ``after``."""

    old: str
    new: str
    parent: str
    after: str | None
    fragment: bytes


def _in_namespace_of(element: etree._Element, tag: str, **attributes: str) -> etree._Element:
    namespace = etree.QName(element).namespace
    return etree.Element(f"{{{namespace}}}{tag}" if namespace else tag, **attributes)


def _successor_id(root: etree._Element, old: str) -> str:
    """``level-sensor-1`` → ``level-sensor-2`` (the next number no element uses)."""
    used = {e.get("ID") for e in root.iter(etree.Element)}
    stem = old.rsplit("-", 1)[0] if old.rsplit("-", 1)[-1].isdigit() else old
    number = 2
    while f"{stem}-{number}" in used:
        number += 1
    return f"{stem}-{number}"


def replacement(specification: bytes, element_id: str, model: str, serial: str) -> Replacement:
    """The specification entry of a new component in ``element_id``'s place: the old
    entry with a new ID (its interfaces renamed alike), the new identity, and its OPC UA
    object kept, since the new part sits where the old one did."""
    root = parse_xml(specification, "the specification")
    old = find(root, element_id)
    parent = old.getparent()
    if local(old) != "InternalElement" or parent is None or not parent.get("ID"):
        raise AmlError(f"{element_id!r} is not a component inside an element with an ID")
    new_id = _successor_id(root, element_id)
    new = etree.fromstring(etree.tostring(old))
    for element in new.iter(etree.Element):
        identifier = element.get("ID")
        if identifier:
            element.set("ID", new_id + identifier[len(element_id):] if identifier.startswith(element_id) else
                        f"{new_id}-{identifier}")  # fmt: skip
    for name, value in (("Model", model), ("SerialNumber", serial), ("OpcUaObject", opcua_object(old))):
        attribute = next((a for a in new if local(a) == "Attribute" and a.get("Name") == name), None)
        if attribute is None:
            attribute = _in_namespace_of(new, "Attribute", Name=name, AttributeDataType="xs:string")
            attributes = [i for i, child in enumerate(new) if local(child) == "Attribute"]
            new.insert(attributes[-1] + 1 if attributes else 0, attribute)
        for child in [c for c in attribute if local(c) == "Value"]:
            attribute.remove(child)
        value_element = _in_namespace_of(attribute, "Value")
        value_element.text = value
        attribute.append(value_element)
    previous = old.getprevious()
    while previous is not None and not previous.get("ID"):
        previous = previous.getprevious()
    after = previous.get("ID") if previous is not None and local(previous) == "InternalElement" else None
    return Replacement(element_id, new_id, parent.get("ID") or "", after, etree.tostring(new, method="c14n"))
