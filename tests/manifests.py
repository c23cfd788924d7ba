"""What a MicroPython `manifest.py` freezes, read two ways: with MicroPython's own rules (`tools/manifestfile.py` from
its source, when the source is on this machine) and with a small stand-in that follows the same rules for the
commands our manifests use (`include`, `package`, `module`, `metadata`; `require` is refused: the runtime needs
no micropython-lib package).

A port's or board's own manifest (`$(PORT_DIR)/...`, `$(BOARD_DIR)/...`) is not part of this repository: both
readers record it and freeze nothing from it.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ENV = "NDN_EDGE_MICROPYTHON_SRC"  # a MicroPython source tree or its .tar.gz, where not in ../shared
_SHARED = ROOT.parent / "shared" / "micropython"
PATH_VARS = ("PORT_DIR", "BOARD_DIR", "MPY_DIR", "MPY_LIB_DIR")


@dataclass
class Frozen:
    """What one manifest freezes: target paths (as imported on the board), the metadata, the port manifests."""

    targets: list[str] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)
    included: list[str] = field(default_factory=list)


def read_with_stand_in(manifest: Path) -> Frozen:
    """The manifest run with a stand-in for MicroPython's manifest API (paths resolved from each manifest's folder,
    `package(files=...)` relative to the package, every named file must exist)."""
    out = Frozen()
    visited: set[Path] = set()

    def add(full: Path, target: str) -> None:
        if not full.is_file():
            raise AssertionError(f"{manifest}: cannot stat {full}")
        out.targets.append(target)

    def include(path, **_options) -> None:
        if not isinstance(path, str):
            for p in path:
                include(p)
            return
        if path.startswith("$("):
            out.included.append(path)
            return
        full = (Path.cwd() / path).resolve()
        run(full / "manifest.py" if full.is_dir() else full)

    def package(package_path, files=None, base_path=".", opt=None) -> None:
        base = (Path.cwd() / base_path).resolve()
        if files is not None:
            for name in files:
                add(base / package_path / name, f"{package_path}/{name}")
        else:
            for full in sorted((base / package_path).glob("**/*.py")):
                out.targets.append(str(full.relative_to(base)))

    def module(module_path, base_path=".", opt=None) -> None:
        if not module_path.endswith(".py"):
            raise AssertionError(f"{manifest}: module {module_path} is not a .py file")
        add((Path.cwd() / base_path / module_path).resolve(), module_path)

    def metadata(**kwargs) -> None:
        if out.metadata:
            raise AssertionError(f"{manifest}: duplicate call to metadata()")
        out.metadata.update(kwargs)

    def require(*args, **kwargs) -> None:
        raise AssertionError(f"{manifest}: requires {args}; the runtime needs no micropython-lib package")

    api = {"include": include, "package": package, "module": module, "metadata": metadata, "require": require}

    def run(path: Path) -> None:
        if path in visited:
            return
        visited.add(path)
        previous = Path.cwd()
        os.chdir(path.parent)  # the manifest API resolves paths from the manifest's folder
        try:
            exec(compile(path.read_text(), str(path), "exec"), dict(api))
        finally:
            os.chdir(previous)

    run(manifest.resolve())
    return out


def manifestfile_module(scratch: Path) -> ModuleType | None:
    """MicroPython's `tools/manifestfile.py`, from $NDN_EDGE_MICROPYTHON_SRC or ../shared/micropython (a source tree
    or its .tar.gz); None when neither is on this machine."""
    found = os.environ.get(SOURCE_ENV) or next(iter(sorted(_SHARED.glob("micropython-*.tar.gz"))), None)
    if found is None:
        return None
    source = Path(found)
    if source.is_dir():
        path = source / "tools" / "manifestfile.py"
    else:
        with tarfile.open(source) as tar:
            member = next((m for m in tar if m.name.endswith("/tools/manifestfile.py")), None)
            if member is None:
                return None
            path = scratch / "manifestfile.py"
            path.write_bytes(tar.extractfile(member).read())
    spec = importlib.util.spec_from_file_location("micropython_manifestfile", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass-like namedtuples look their module up
    spec.loader.exec_module(module)
    return module


def read_with_micropython(manifestfile: ModuleType, manifest: Path, scratch: Path) -> Frozen:
    """The manifest run by MicroPython's own rules, in freeze mode, with empty port and board manifests."""
    out = Frozen()
    stubs = {}
    for var in PATH_VARS:
        folder = scratch / var.lower()
        for stub in ("manifest.py", "boards/manifest.py", "variants/standard/manifest.py"):
            (folder / stub).parent.mkdir(parents=True, exist_ok=True)
            (folder / stub).write_text(f"# {var}/{stub}\n")
        stubs[var] = str(folder)
    reader = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, stubs)
    reader.execute(str(manifest))
    for result in reader.files():
        owner = next((var for var, folder in stubs.items() if result.full_path.startswith(folder)), None)
        if owner is None:
            out.targets.append(result.target_path)
    meta = reader.metadata()
    out.metadata = {k: getattr(meta, k) for k in ("version", "description", "license") if getattr(meta, k)}
    return out
