"""The package's import structure: no cycles, and layers that import downward only.

Every module under ``twinledger/`` is parsed (not imported), so the checks see imports at
module level, inside functions and under ``if TYPE_CHECKING:`` alike.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "twinledger"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"twinledger", "errors", "core", "crypto"}),  # "twinledger": the root package (its version)
    frozenset({"abc", "config", "ledger", "consensus", "net"}),
    frozenset({"aml", "contracts", "store"}),
    frozenset({"sharing", "ingest"}),
    frozenset({"services", "launcher"}),
    frozenset({"agent"}),
    frozenset({"api", "demo", "bench"}),
    frozenset({"node"}),
    frozenset({"cli", "__main__"}),
)
"""Lower index, lower layer: a module imports from its own layer or lower ones."""

KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset({
    # (importer, imported): upward imports in files of the other workstream, to be fixed there.
})


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool
    type_checking: bool

    def __str__(self) -> str:
        where = " (in a function)" if self.in_function else " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.importer} imports {self.imported} at line {self.line}{where}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The twinledger modules an import statement loads (a name imported from a package
    counts as its submodule when there is one)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in MODULES else base


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool) -> None:
        self.importer = importer
        self.is_package = is_package
        self.imports: list[Import] = []
        self._functions = 0
        self._type_checking = 0

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not guarded:
            self.generic_visit(node)
            return
        self._type_checking += 1
        for statement in node.body:
            self.visit(statement)
        self._type_checking -= 1
        for statement in node.orelse:
            self.visit(statement)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        for imported in _resolve(self.importer, self.is_package, node):
            if imported == "twinledger" or imported.startswith("twinledger."):
                self.imports.append(Import(self.importer, imported, node.lineno, self._functions > 0,
                                           self._type_checking > 0))  # fmt: skip

    visit_Import = visit_ImportFrom = _import


def _collect() -> list[Import]:
    found = []
    for name, path in MODULES.items():
        collector = _ImportCollector(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(), str(path)))
        found += collector.imports
    return found


IMPORTS = _collect()


def _component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    component = _component(module)
    for index, members in enumerate(LAYERS):
        if component in members:
            return index
    raise AssertionError(f"{module}: twinledger.{component} has no layer; add it to LAYERS in {Path(__file__).name}")


def _cycle_through(start: str, graph: dict[str, dict[str, Import]]) -> list[Import] | None:
    """The imports of one cycle from ``start`` back to itself (breadth first: a shortest)."""
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target, statement in graph.get(module, {}).items():
                if target == start:
                    path = [statement]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                if target not in came_by:
                    came_by[target] = statement
                    following.append(target)
        frontier = following
    return None


def test_every_module_is_parsed_and_has_a_layer():
    assert "twinledger.node" in MODULES and "twinledger.api.app" in MODULES
    for module in MODULES:
        _layer(module)


def test_no_import_cycles_at_module_level():
    """What runs at import time must not go round in a circle (imports inside functions
    and under TYPE_CHECKING do not run then)."""
    graph: dict[str, dict[str, Import]] = {}
    for statement in IMPORTS:
        if not statement.in_function and not statement.type_checking and statement.imported in MODULES:
            graph.setdefault(statement.importer, {}).setdefault(statement.imported, statement)
    cycles = {}
    for module in sorted(graph):
        cycle = _cycle_through(module, graph)
        if cycle is not None:
            cycles.setdefault(frozenset(s.importer for s in cycle), cycle)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(map(str, c)) for c in cycles.values())


def test_only_the_command_line_imports_the_cli():
    offending = [str(s) for s in IMPORTS if _component(s.imported) == "cli"
                 and _component(s.importer) not in ("cli", "__main__")]  # fmt: skip
    assert not offending, "twinledger.cli is imported from outside it:\n" + "\n".join(offending)


def test_the_api_never_imports_the_node():
    """The API knows the node only as ``abc.RunningNode``."""
    offending = [str(s) for s in IMPORTS if _component(s.importer) == "api" and _component(s.imported) == "node"]
    assert not offending, "the API imports the node:\n" + "\n".join(offending)


def test_layers_import_downward_only():
    offending = [f"{s} (layer {_layer(s.importer)} -> {_layer(s.imported)})" for s in IMPORTS
                 if _layer(s.imported) > _layer(s.importer)
                 and (s.importer, s.imported) not in KNOWN_EXCEPTIONS]  # fmt: skip
    assert not offending, "imports of a higher layer:\n" + "\n".join(offending)


def test_known_exceptions_still_exist():
    """An exception that was fixed leaves the list, so the list stays true."""
    upward = {(s.importer, s.imported) for s in IMPORTS if _layer(s.imported) > _layer(s.importer)}
    assert not KNOWN_EXCEPTIONS - upward, f"fixed, remove from KNOWN_EXCEPTIONS: {sorted(KNOWN_EXCEPTIONS - upward)}"


def test_contract_calls_are_built_only_by_the_builders():
    """Outside ``contracts/``, no code names a contract method by string: it calls a builder
    of ``contracts/calls.py`` (the one place that knows method names and argument shapes)."""
    found = []
    for name, path in MODULES.items():
        if name.startswith("twinledger.contracts"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            literal = [k.arg for k in node.keywords if k.arg in ("contract", "method") and isinstance(k.value, ast.Constant)]
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if "contract" in literal or callee == "ContractCall":
                found.append(f"{name}:{node.lineno}")
    assert not found, f"contract calls built by hand (use twinledger.contracts.calls): {found}"


def test_every_builder_passes_its_methods_parser():
    """Each builder's arguments are what the contract method's own parser accepts."""
    from twinledger.contracts import builtin_contracts, calls
    from twinledger.contracts.authorization import WriteToken
    from twinledger.crypto import kpcpre
    from twinledger.crypto.keys import SigningKey
    from twinledger.crypto.policy import parse_policy, to_obj

    signer = SigningKey.generate()
    key, digest, twin = b"\x01" * 32, b"\x02" * 32, "a1b2c3d4e5f60718"
    version = calls.SpecificationVersion(digest, key, "store:" + "ab" * 16 + ":" + "cd" * 32, 1200, model=b"\x80")
    built = [
        calls.create_twin("line", "line-1", version, {"org:maker": {"maintainer": []}}),
        calls.create_twin("line", "line-1", calls.SpecificationVersion(digest, key, "store:x", 10, staged=digest), {}),
        calls.stage(digest, 0, 2, b"part"),
        calls.unstage(digest),
        calls.replace_aml(twin, calls.SpecificationVersion(digest, key, "store:x", 10, model=b"\x80", base=digest)),
        calls.insert_aml(twin, "plant", "conveyor", "c-2", version),
        calls.remove_aml(twin, "conveyor", [("Belt: c-1:Out → c-2:In", ("line", "c-1"))], version),
        calls.add_document(twin, digest, "manual", "", "store:" + "ab" * 16 + ":" + "cd" * 32, "text/plain", 10, "c-1"),
        calls.add_document_version(twin, digest.hex(), digest, 10, "store:x", "fixed"),
        calls.remove_document(twin, digest.hex()),
        calls.add_source(twin, "https://example.org/line", "vendor portal"),
        calls.remove_source(twin, "https://example.org/line"),
        calls.add_feed(twin, "level-1", "store:" + "ab" * 32, "level"),
        calls.remove_feed(twin, "level-1"),
        calls.checkpoint_feed(twin, "level-1", 3, digest),
        calls.call_program(twin, "SetVelocity", {"velocity": "1.0", "reverse": False, "step": 2}),
        calls.dispatch_call(twin, 1),
        calls.report_call(twin, 1, "executed", "ok"),
        calls.report_anomaly(twin, "level-1", "raised", "below", 5, 2),
        calls.grant_role(twin, "org:maker", "maintainer", ["conveyor"]),
        calls.revoke_role(twin, "org:maker", "maintainer"),
        calls.set_permissions(twin, "maintainer", ["document.add"]),
        calls.revoke_token(twin, b"\x03" * 32, key),
        calls.present_token(WriteToken("c", twin, key, ("document.add",), (), 1, b"", b"\x05" * 16).signed(signer).encoded()),
        calls.grant_read(twin, "maker", to_obj(parse_policy(f"twin:{twin} and kind:sensor")), [digest], ["owner/node-1"], 0),
        calls.revoke_read(digest),
        calls.revoke_read(digest, {key: [digest, digest]}),
        calls.rekey_read(twin, {key: [digest]}),
        calls.add_device(twin, "plc-1", key, kpcpre.keygen().public.to_bytes()),
        calls.retire_device(twin, key),
        calls.propose({"op": "remove_organisation", "name": "maker"}),
        calls.approve(digest),
        calls.withdraw(digest),
        calls.revoke_key(key),
        calls.put_record("text/plain", {"line": "1"}, payload=b"reading"),
        calls.put_record("text/plain", {}, payload_hash=digest),
        calls.register_principal("alice", "person", key, ["engineer"], b"\x06" * 64),
        calls.set_principal_roles("alice", ["viewer"]),
        calls.remove_principal("alice"),
    ]
    methods = {(c.name, m): method for c in builtin_contracts() for m, method in c.methods.items()}
    for call in built:
        methods[(call.contract, call.method)].parse(call.args)
    assert {(c.contract, c.method) for c in built} == set(methods), "every contract method has a builder, tried here"


def _calls_of(module: str) -> set[str]:
    """Names of the functions and methods ``module`` calls."""
    tree = ast.parse(MODULES[module].read_text())
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}  # fmt: skip


def test_the_demo_runs_the_services_in_process_and_feeds_have_one_maker():
    """No CLI subprocess in the demo; the CLI, the API and the agent create a feed with the
    one workflow that does (the store's create_feed is called by it and benchmarks only)."""
    demo_imports = {i.imported for i in IMPORTS if i.importer == "twinledger.demo"}
    assert "subprocess" not in MODULES["twinledger.demo"].read_text() and "twinledger.cli" not in demo_imports
    for module in ("twinledger.cli.feeds", "twinledger.api.workflows", "twinledger.agent.agent"):
        assert "create_and_attach" in _calls_of(module), module
    makers = {name for name in MODULES if "create_feed" in _calls_of(name)}
    assert makers <= {"twinledger.services.feeds", "twinledger.bench.kpcpre", "twinledger.bench.store"}, makers
