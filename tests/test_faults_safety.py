"""Untrusted files and the network: every torch.load passes weights_only=True, YAML is read only
through safe loaders (numpy without pickles), and the MLflow UI listens on 127.0.0.1 only."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

import pytest
from helpers import REPO

LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def python_sources() -> list[Path]:
    skip = {"ray_results", "results", "build", "dist", "node_modules", "__pycache__"}
    files = [p for p in REPO.rglob("*.py")
             if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts[:-1])]
    assert len(files) > 20 and REPO / "trainable" / "train" / "checkpoint.py" in files
    return files


def calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: k.value for k in node.keywords}, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "yaml", "pickle"):
            for alias in node.names:
                if alias.name in ("load", "load_all", "unsafe_load", "full_load"):
                    yield f"from {node.module} import {alias.name}", {}, node.lineno


def is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_safe_torch_load_every_call_passes_weights_only_true():
    loads, bad = 0, []
    for path in python_sources():
        for name, keywords, line in calls(path):
            where = f"{path.relative_to(REPO)}:{line}: {name}"
            if name == "from torch import load":
                bad.append(where)
            elif name == "torch.load" or name.endswith(("timm.models.load_state_dict", "timm.models.load_checkpoint")):
                loads += 1
                if not is_true(keywords.get("weights_only")):
                    bad.append(where + " without weights_only=True")
            elif "weights_only" in keywords and not is_true(keywords["weights_only"]):
                bad.append(where + " with weights_only not True")
    assert loads >= 2, "the scan found no torch.load: is it looking at the right tree?"
    assert not bad, "\n".join(bad)


def test_safe_yaml_and_numpy_loading_only():
    unsafe = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load",
              "yaml.full_load_all", "from yaml import load", "from yaml import unsafe_load",
              "from yaml import full_load", "from yaml import load_all"}
    safe_loads, bad = 0, []
    for path in python_sources():
        for name, keywords, line in calls(path):
            where = f"{path.relative_to(REPO)}:{line}: {name}"
            safe_loads += name == "yaml.safe_load"
            if name in unsafe:
                bad.append(where)
            loader = keywords.get("Loader")
            if loader is not None and "Safe" not in ast.unparse(loader):
                bad.append(where + f" with Loader={ast.unparse(loader)}")
            if name.endswith("np.load") and is_true(keywords.get("allow_pickle")):
                bad.append(where + " with allow_pickle=True")
    assert safe_loads >= 3
    assert not bad, "\n".join(bad)


@LINUX_ONLY
def test_safe_mlflow_ui_listens_on_loopback_only(mlflow_server):
    """The session's MLflow UI (conftest: `ui` with no --host, the way users start it) listens on
    127.0.0.1 only, as the kernel's socket table says."""
    assert listening(mlflow_server["port"]) == {"127.0.0.1"}


def listening(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on `port` (Linux /proc/net)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_address(address, width))
    return found


def _address(hex_address: str, width: int) -> str:
    import ipaddress

    raw = bytes.fromhex(hex_address)
    # /proc/net writes each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(ordered)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)
