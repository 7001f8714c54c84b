"""Real AutomationML from engineering tools (tests/data/aml/SOURCES.md): every file the
official schemas accept is accepted, stored, edited, diffed and packed, and every stored
version still follows its schema — checked here with the corpus's own copies of the
XSDs, not the package's."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from lxml import etree

from twinledger import aml
from twinledger.aml import AmlError
from twinledger.aml.document import local
from twinledger.aml.libraries import LIBRARY_KINDS, MIN_LIBRARY_BYTES, join, split
from twinledger.aml.semantics import name_path

CORPUS = Path(__file__).parent / "data" / "aml" / "files"
XSD = {None: CORPUS / "xsd" / "CAEX_ClassModel_V2.15.xsd", "http://www.dke.de/CAEX": CORPUS / "xsd" / "CAEX_ClassModel_V.3.0.xsd"}
INVALID = {
    "uax__ARAPCAllClassLibsV_1_2_1.aml": "not well-formed XML: expected '>'",
    "mtppy__example_recipe_manifest.aml":
        "CAEX 2.15 schema: line 2358: Element 'InstanceHierarchy': This element is not expected",
    "a2o__mapping-object.aml": "CAEX 3.0 schema: line 2: Element 'InstanceHierarchy': This element is not expected",
}
"""Files as published that their own schema refuses, and the one line saying why."""
SAP_UNPACKED = CORPUS / "sap__amlx_unpacked_minimal_AutomationMLComponent_WithDocuments"


def _specification(path: Path) -> bytes:
    data = path.read_bytes()
    return aml.read_package(data).specification if aml.is_package(data) else data


VALID = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name not in INVALID)


def follows_schema(specification: bytes) -> bool:
    root = etree.fromstring(specification)
    return etree.XMLSchema(etree.parse(str(XSD[etree.QName(root).namespace]))).validate(root)


def _first(root: etree._Element, kind: str, inside: str) -> etree._Element | None:
    return next((e for e in root.iter(etree.Element) if local(e) == kind and any(
        local(a) == inside for a in e.iterancestors())), None)  # fmt: skip


def _new_component(identifier: str) -> bytes:
    return (f'<InternalElement Name="Twinledger test {identifier}" ID="{identifier}">'
            '<Attribute Name="SerialNumber" AttributeDataType="xs:string"><Value>SN-1</Value></Attribute>'
            '<ExternalInterface Name="Start" ID="{identifier}-start" RefBaseClassPath="TwinledgerInterfaceClassLib/Program">'
            '<Attribute Name="speed" AttributeDataType="xs:double"><Constraint Name="SafeRange"><OrdinalScaledType>'
            "<RequiredMaxValue>3</RequiredMaxValue><RequiredMinValue>0</RequiredMinValue></OrdinalScaledType>"
            "</Constraint></Attribute></ExternalInterface></InternalElement>").replace("{identifier}", identifier).encode()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_a_real_file_is_stored_edited_diffed_and_packed_and_stays_schema_valid(path: Path) -> None:
    stored = aml.stored_form(_specification(path))
    assert follows_schema(stored)
    assert aml.stored_form(stored) == stored, "the stored form is a fixed point"
    packed = aml.write_package(stored, (aml.package.Part("/files/manual.txt", "text/plain", b"manual"),))
    unpacked = aml.read_package(packed)
    assert unpacked.specification == stored and [p.name for p in unpacked.parts] == ["/files/manual.txt"]

    root = etree.fromstring(stored)
    skeleton, libraries = split(stored)
    assert join(skeleton, libraries) == stored
    sizes = {c.get("Name"): len(etree.tostring(c, method="c14n")) for c in root if local(c) in LIBRARY_KINDS}
    cut = {library.name for library in libraries}
    assert cut <= set(sizes) and all(sizes[name] >= 0.9 * MIN_LIBRARY_BYTES for name in cut)
    assert all(name in cut for name, size in sizes.items() if size >= 1.1 * MIN_LIBRARY_BYTES), "large ones are cut out"
    assert all(library.data.startswith(b"  <") and library.data.endswith(b">\n") for library in libraries)
    component = _first(root, "InternalElement", "InstanceHierarchy")
    if component is not None:  # a plant: a component with a program goes in, by ID, and out again
        edit = aml.insert(stored, _new_component("tl-new"), component.get("ID"))
        program = aml.program(edit.specification, "Twinledger test tl-new/Start")
        assert program.component_id == "tl-new" and program.path.startswith(name_path(component) + "/")
        assert aml.component_path(edit.specification, "tl-new")[-2:] == (component.get("ID"), "tl-new")
        assert split(edit.specification)[1] == tuple(replace(library, offset=library.offset + len(edit.specification)
                                                     - len(stored)) for library in libraries), \
            "an edit of the plant leaves every library as it was: the next version stores none of them again"
    else:  # a library: a class goes in by name path
        library = next(c for c in root if local(c).endswith("ClassLib"))
        kind = {"SystemUnitClassLib": "SystemUnitClass", "RoleClassLib": "RoleClass"}.get(local(library), "InterfaceClass")
        edit = aml.insert(stored, f'<{kind} Name="TwinledgerTestClass"/>'.encode(), library.get("Name"))
    assert follows_schema(edit.specification)
    change = aml.diff(stored, edit.specification).splitlines()
    assert [line[0] for line in change[3:] if line[:1] in "+-"] == ["+"] * sum(1 for line in change if
                                                                              line.startswith("+ ")), change[:12]  # fmt: skip
    assert any("Twinledger" in line for line in change if line.startswith("+"))
    back = aml.remove(edit.specification, edit.element)
    assert back.specification == stored, "insert then remove gives the version before, byte for byte"


@pytest.mark.parametrize("name", sorted(INVALID))
def test_files_their_own_schema_refuses_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(AmlError, match=INVALID[name]):
        aml.stored_form((CORPUS / name).read_bytes())


def test_an_element_under_a_tia_device_item_goes_before_its_supported_role_class() -> None:
    stored = aml.stored_form((CORPUS / "vf__TIA_sample_device.aml").read_bytes())
    root = etree.fromstring(stored)
    item = next(e for e in root.iter(etree.Element) if local(e) == "InternalElement" and e.get("ID")
                and len(e) and local(e[-1]) == "SupportedRoleClass")  # fmt: skip
    edit = aml.insert(stored, _new_component("tl-module"), item.get("ID"))
    placed = etree.fromstring(edit.specification).xpath("//*[@ID=$i]", i=item.get("ID"))[0]
    kinds = [local(c) for c in placed]
    assert kinds.index("InternalElement") < kinds.index("SupportedRoleClass") and kinds[-1] == "SupportedRoleClass"
    assert follows_schema(edit.specification)


def test_removing_a_linked_element_refuses_or_takes_its_links_along() -> None:
    stored = aml.stored_form((CORPUS / "uax__ARAPCExample.aml").read_bytes())
    root = etree.fromstring(stored)
    links = [e for e in root.iter(etree.Element) if local(e) == "InternalLink"]
    target = links[0].get("RefPartnerSideB").split(":")[0]
    with pytest.raises(AmlError, match="point into") as refused:
        aml.remove(stored, target)
    assert refused.value.code == "linked_element"
    edit = aml.remove(stored, target, links="remove")
    assert edit.links and follows_schema(edit.specification)
    left = etree.fromstring(edit.specification)
    ids = {e.get("ID") for e in left.iter(etree.Element)}
    for link in (e for e in left.iter(etree.Element) if local(e) == "InternalLink"):
        for side in ("RefPartnerSideA", "RefPartnerSideB"):
            assert link.get(side).split(":")[0] in ids, "no link points at a removed element"


def test_a_class_still_instantiated_cannot_be_removed() -> None:
    stored = aml.stored_form((CORPUS / "uax__Part2.aml").read_bytes())
    with pytest.raises(AmlError, match="still refers to 'ExampleSystemUnitClassLib/Roboter'") as refused:
        aml.remove(stored, "ExampleSystemUnitClassLib/Roboter")
    assert refused.value.code == "class_in_use"


def _zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def test_an_amlx_container_gives_its_root_document_and_its_other_parts() -> None:
    package = aml.read_package(_zipped(SAP_UNPACKED))
    assert package.root_name == "/minimal_AutomationMLComponent_WithDocuments.aml"
    assert {p.name: p.media_type for p in package.parts} == {
        "/files/TestPDFDeviceManual.pdf": "application/pdf", "/files/TestTXTDeviceManual.txt": "text/plain",
        "/files/TestTXTWarranty.txt": "text/plain"}, "the CAEX schema part is not a document"  # fmt: skip
    stored = aml.stored_form(package.specification)
    again = aml.read_package(aml.write_package(stored, package.parts, package.root_name))
    assert again == aml.Package(package.root_name, stored, package.parts)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"PK\x03\x04 not really a zip", "not a readable zip"),
        (None, "unpacks 1"),
        (b"", "names no single root"),
    ],
)
def test_hostile_packages_are_refused_with_a_reason(data: bytes | None, complaint: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if data is None:
            archive.writestr("bomb.aml", b"\0" * (64 * 1024 * 1024))
        else:
            archive.writestr("files/readme.txt", b"no root here")
    with pytest.raises(AmlError, match=complaint):
        aml.read_package(data if data else buffer.getvalue())
