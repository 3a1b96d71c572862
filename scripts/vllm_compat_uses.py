"""What the OmniZip plugin uses of vLLM, collected from ``omnizip/vllm/*.py`` with ``ast``.

:func:`collect_uses` returns one :class:`Use` per vLLM symbol:

- ``import``: every ``from vllm... import X`` / ``import vllm...`` (deferred imports included);
- ``lookup``: a ``("vllm.module", "Name")`` pair the plugin imports by name at run time, where
  the module may be absent (a runner that one version does not ship): optional;
- ``override``: a method or class attribute an OmniZip class defines over a vLLM base class
  (methods: with the parameters of the installed version);
- ``inherited``: ``self.x`` an OmniZip mixin reads (or ``super().x()`` it calls) that only
  the vLLM base class provides;
- ``hook``: an attribute of an OmniZip class that vLLM reads by name
  (``hasattr(model, "get_model_state_cls")``);
- ``runtime`` / ``call``: attributes the plugin reads from other vLLM objects, and vLLM
  constructors it calls positionally (:data:`RUNTIME_READS`, :data:`CALLS`: declared here,
  because ``ast`` cannot type a parameter; every declared name must occur in the plugin).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from vllm_compat_sources import Source, signature

__all__ = ["CALLS", "RUNTIME_READS", "Use", "collect_uses"]

#: attributes read from vLLM objects that are not ``self``: symbol -> (the plugin files that read
#: it, optional)
RUNTIME_READS: dict[str, tuple[str, bool]] = {
    "vllm.config.VllmConfig.model_config": ("thinker.py", False),
    "vllm.config.ModelConfig.hf_config": ("processing.py, thinker.py", False),
    "vllm.config.ModelConfig.multimodal_config": ("thinker.py", False),
    "vllm.config.MultiModalConfig.is_multimodal_pruning_enabled": ("thinker.py", False),
    "vllm.multimodal.inputs.MultiModalFeatureSpec.mm_position": ("thinker.py", False),
    "vllm.multimodal.inputs.MultiModalFeatureSpec.modality": ("thinker.py", False),
    "vllm.multimodal.inputs.MultiModalFeatureSpec.data": ("thinker.py", False),
    "vllm.multimodal.inputs.PlaceholderRange.offset": ("processing.py, thinker.py", False),
    "vllm.multimodal.inputs.PlaceholderRange.length": ("processing.py, thinker.py", False),
    "vllm.multimodal.inputs.PlaceholderRange.is_embed": ("processing.py", False),
    "vllm.multimodal.processing.context.BaseProcessingInfo.ctx": ("processing.py", False),
    "vllm.multimodal.processing.context.BaseProcessingInfo.get_hf_config": ("processing.py", False),
    "vllm.multimodal.processing.context.InputProcessingContext.model_config": ("processing.py", False),
    "vllm.model_executor.models.registry._ModelRegistry.get_supported_archs": ("__init__.py", False),
    "vllm.model_executor.models.registry._ModelRegistry.register_model": ("__init__.py", False),
    "vllm.multimodal.registry.MultiModalRegistry.register_processor": ("qwen2_5_omni.py, qwen3_omni.py", False),
    # Qwen3-Omni's audio encoder is vLLM's own module: the scorer reads its last attention layer
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioEncoder.layers": ("thinker.py", False),
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioEncoderLayer.self_attn": ("thinker.py", False),
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioAttention.qkv_proj": ("audio_scores.py", False),
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioAttention.num_heads": ("audio_scores.py", False),
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioAttention.num_local_heads": ("audio_scores.py", False),
    "vllm.model_executor.models.qwen3_omni_moe_thinker.Qwen3OmniMoeAudioAttention.scaling": ("audio_scores.py", False),
    # the engine of `omnizip eval --engine vllm` (omnizip.vllm.eval_worker)
    "vllm.LLM.generate": ("eval_worker.py", False),
    "vllm.outputs.RequestOutput.outputs": ("eval_worker.py", False),
    "vllm.outputs.RequestOutput.prompt_token_ids": ("eval_worker.py", False),
    "vllm.outputs.RequestOutput.num_cached_tokens": ("eval_worker.py", False),
    "vllm.outputs.CompletionOutput.text": ("eval_worker.py", False),
    "vllm.outputs.CompletionOutput.token_ids": ("eval_worker.py", False),
    # the V2 runner's model state (omnizip.vllm.runner.add_pruner)
    "vllm.v1.worker.gpu.model_states.interface.ModelState.model": ("runner.py", False),
    "vllm.v1.worker.gpu.model_states.interface.ModelState.encoder_cache": ("runner.py", False),
    "vllm.v1.worker.gpu.model_states.interface.ModelState.inputs_embeds_size": ("runner.py", False),
    "vllm.v1.worker.gpu.model_states.default.DefaultModelState.rope_state": ("runner.py", False),
    "vllm.v1.worker.gpu.model_states.default.DefaultModelState.mm_pruner": ("runner.py", False),
    # the V1 runners (0.32, 0.33) and the standalone CPU runner (0.34): optional
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.load_model": ("runner.py", True),
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.get_model": ("runner.py", True),
    "vllm.v1.worker.gpu_model_runner.GPUModelRunner.is_multimodal_pruning_enabled": ("runner.py", True),
    "vllm.v1.worker.cpu_model_runner.CPUModelRunner.load_model": ("runner.py", True),
    "vllm.v1.worker.cpu.model_states.interface.ModelState.model": ("runner.py", True),
    "vllm.v1.worker.cpu.model_states.interface.ModelState.encoder_cache": ("runner.py", True),
    "vllm.v1.worker.cpu.model_states.interface.ModelState.inputs_embeds_size": ("runner.py", True),
    "vllm.v1.worker.cpu.model_states.default.DefaultModelState.rope_state": ("runner.py", True),
    "vllm.v1.worker.cpu.model_states.default.DefaultModelState.mm_pruner": ("runner.py", True),
    "vllm.platforms.interface.Platform.uses_standalone_cpu_model_runner": ("runner.py", True),
}

#: vLLM callables the plugin calls with positional arguments: symbol -> (parameters, optional)
CALLS: dict[str, tuple[tuple[str, ...], bool]] = {
    "vllm.v1.worker.gpu.model_states.mm_pruning.MultiModalPruner":
        (("model", "rope_state", "encoder_cache", "inputs_embeds_size"), False),
    "vllm.v1.worker.cpu.mm_pruning.MultiModalPruner":
        (("model", "rope_state", "encoder_cache", "inputs_embeds_size"), True),
    "vllm.v1.worker.gpu.model_states.default.DefaultModelState.__init__":
        (("vllm_config", "model", "encoder_cache", "device"), False),
    "vllm.multimodal.inputs.PlaceholderRange": (("offset", "length", "is_embed"), False),
}

_KIND_ORDER = ("import", "lookup", "override", "inherited", "hook", "runtime", "call")
_WHAT = {
    "import": "imports it",
    "lookup": "imports it by name when present",
    "override": "overrides it",
    "inherited": "reads it from the vLLM base class",
    "hook": "defines it; vLLM reads it by name",
    "runtime": "reads it at run time",
    "call": "calls it",
}


@dataclass
class Use:
    kind: str
    symbol: str
    where: set[str] = field(default_factory=set)
    optional: bool = False
    expected: str | None = None  # override: the installed signature; call: the parameters

    def describe(self) -> str:
        return f"{_WHAT[self.kind]} ({', '.join(sorted(self.where))})"

    def check(self, source: Source, reference: Source) -> tuple[bool, str]:
        """(present, note) in ``source``."""
        if self.kind == "hook":
            readers = source.readers(self.symbol.split('"')[1])
            return bool(readers), ", ".join(r.removeprefix("vllm.") for r in readers)
        found = source.find(self.symbol)
        if found is None:
            return False, ""
        if self.kind == "override" and self.expected is not None:
            now = signature(found.node)
            if now != self.expected:
                return False, f"signature now {now}"
        if self.kind == "call":
            node = found.node
            if isinstance(node, ast.ClassDef):
                init = source.members(found.module, node.name).get("__init__")
                node = init.node if init is not None else node
            params = (signature(node) or "()")[1:-1].split(", ")
            params = [p.split("=")[0] for p in params if p not in ("self", "")]
            wanted = list(self.expected.split(","))
            if params[: len(wanted)] != wanted:
                return False, f"parameters now ({', '.join(params)})"
        return True, ""


# ----------------------------------------------------------------------------- the plugin side
@dataclass
class _Class:
    name: str  # omnizip.vllm.<file>.<Class>
    file: str
    bases: list[str]  # resolved dotted names
    defined: set[str]  # methods, class attributes, self.x assignments
    body_names: set[str]  # methods and class attributes only
    reads: set[str]  # self.x loads, super().x() calls
    supers: set[str]


def _imports(tree: ast.Module, module: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                origin = ".".join(module.split(".")[: -node.level] + ([origin] if origin else []))
            for alias in node.names:
                names[alias.asname or alias.name] = f"{origin}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
    return names


def _classes(tree: ast.Module, module: str, file: str, names: dict[str, str]) -> list[_Class]:
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = []
        for b in node.bases:
            if isinstance(b, ast.Name):
                bases.append(names.get(b.id, f"{module}.{b.id}"))
        body = {s.name for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for s in node.body:
            targets = s.targets if isinstance(s, ast.Assign) else [s.target] if isinstance(s, ast.AnnAssign) else []
            body |= {t.id for t in targets if isinstance(t, ast.Name)}
        defined, reads, supers = set(body), set(), set()
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                (defined if isinstance(sub.ctx, ast.Store) else reads).add(sub.attr)
            if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Call)
                    and isinstance(sub.value.func, ast.Name) and sub.value.func.id == "super"):
                supers.add(sub.attr)
        out.append(_Class(f"{module}.{node.name}", file, bases, defined, body, reads, supers))
    return out


def _linearise(cls: _Class, table: dict[str, _Class]) -> tuple[list[_Class], list[str]]:
    """(the OmniZip classes of ``cls``'s MRO, its vLLM bases), in order."""
    ours: list[_Class] = []
    theirs: list[str] = []

    def visit(c: _Class) -> None:
        if c in ours:
            return
        ours.append(c)
        for base in c.bases:
            if base in table:
                visit(table[base])
            elif base.startswith("vllm.") and base not in theirs:
                theirs.append(base)

    visit(cls)
    return ours, theirs


def collect_uses(plugin_dir: Path, reference: Source) -> list[Use]:
    """Every vLLM symbol the plugin uses; ``reference`` (the installed vLLM) decides what is
    an override and which base class provides an inherited attribute."""
    uses: dict[tuple[str, str], Use] = {}

    def add(kind: str, symbol: str, file: str, optional: bool = False, expected: str | None = None) -> None:
        use = uses.setdefault((kind, symbol), Use(kind, symbol, optional=optional, expected=expected))
        use.where.add(file)

    table: dict[str, _Class] = {}
    sources = {}
    for path in sorted(plugin_dir.glob("*.py")):
        text = path.read_text()
        sources[path.name] = text
        tree = ast.parse(text, str(path))
        module = f"omnizip.vllm.{path.stem}"
        names = _imports(tree, module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("vllm"):
                for alias in node.names:
                    add("import", f"{node.module}.{alias.name}", path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("vllm"):
                        add("import", alias.name, path.name)
            elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                module_name, attr = (e.value for e in node.elts)
                if module_name.startswith("vllm."):
                    add("lookup", f"{module_name}.{attr}", path.name, optional=True)
        for cls in _classes(tree, module, path.name, names):
            table[cls.name] = cls

    for cls in table.values():
        ours, theirs = _linearise(cls, table)
        if not theirs or any(cls.name in other.bases for other in table.values()):
            continue  # a mixin or an intermediate class: checked through its concrete classes
        bases = [(b, reference.find(b)) for b in theirs]
        provided = {}
        for dotted, member in bases:
            if member is not None and isinstance(member.node, ast.ClassDef):
                for name in reference.members(member.module, member.node.name):
                    provided.setdefault(name, dotted)
        defined = set().union(*(c.defined for c in ours))
        for c in ours:
            for name in sorted(c.body_names):
                if name in provided:
                    found = reference.find(f"{provided[name]}.{name}")
                    add("override", f"{provided[name]}.{name}", c.file,
                        expected=signature(found.node) if found is not None else None)
                elif reference.readers(name):
                    add("hook", f'hasattr(model, "{name}")', c.file)
            for name in sorted((c.reads | c.supers) - defined):  # super().x of an override: above
                if name in provided:
                    add("inherited", f"{provided[name]}.{name}", c.file)

    for symbol, (files, optional) in RUNTIME_READS.items():
        add("runtime", symbol, _declared(symbol.rsplit(".", 1)[1], files, sources), optional)
    for symbol, (params, optional) in CALLS.items():
        parts = symbol.split(".")
        name = parts[-2] if parts[-1] == "__init__" else parts[-1]
        add("call", symbol, _where(name, sources, word=True), optional, ",".join(params))
    return sorted(uses.values(), key=lambda u: (_KIND_ORDER.index(u.kind), u.symbol))


def _declared(name: str, files: str, sources: dict[str, str]) -> str:
    """``files`` (comma-separated plugin files), each checked to mention ``.name`` (or the name
    as a string, for ``getattr``): an error for a declared read a file no longer has."""
    for file in files.split(", "):
        if not re.search(rf"\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"']", sources.get(file, "")):
            raise ValueError(f"scripts/vllm_compat_uses.py declares that omnizip/vllm/{file} reads "
                             f".{name}; it does not (any more): update RUNTIME_READS")
    return files


def _where(name: str, sources: dict[str, str], word: bool = False) -> str:
    """The plugin files that mention ``name`` (as ``.name`` or a string; ``word``: anywhere);
    an error if none: a declared use the plugin no longer has."""
    pattern = re.compile(rf"\b{re.escape(name)}\b" if word else
                         rf"(\.{re.escape(name)}\b|[\"']{re.escape(name)}[\"'])")
    files = [f for f, text in sources.items() if pattern.search(text)]
    if not files:
        raise ValueError(f"scripts/vllm_compat_uses.py declares a use of {name!r} that no "
                         "omnizip/vllm/*.py mentions any more; remove it")
    return ", ".join(files)
