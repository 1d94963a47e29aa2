"""The wheel is what users install: build it, install it alone into a fresh venv and run the
product from outside the source tree.  This catches what an editable install hides: a module
missing from the package list, a catalog that is a symlink into the checkout, data files left out,
or the kernels importing from the repository instead of from `gnconvert.kernels`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)


def _run(args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation", "-q",
                  "-w", tmp / "dist"], cwd=tmp)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("gnconvert-*.whl")
    # The venv sees the dependencies already installed here, but gnconvert only from the wheel.
    made = _run([sys.executable, "-m", "venv", "--system-site-packages", tmp / "venv"], cwd=tmp)
    assert made.returncode == 0, made.stderr
    bin_dir = tmp / "venv" / "bin"
    installed = _run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return tmp, bin_dir


def _source_modules():
    """Every module of the source tree, under the name it has once installed."""
    names = []
    for root, prefix in ((REPO / "gnconvert", "gnconvert"), (REPO / "kernels", "gnconvert.kernels")):
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__main__":  # importing it runs the CLI
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join([prefix, *parts]))
    return names


def test_wheel_installs_every_module_and_a_real_catalog(venv):
    tmp, bin_dir = venv
    probe = (
        "import importlib, json, os, sys\n"
        "mods = json.loads(sys.argv[1])\n"
        "files = {m: importlib.import_module(m).__file__ for m in mods}\n"
        "import gnconvert\n"
        "data = os.path.join(os.path.dirname(gnconvert.__file__), 'data', 'model_ids.json')\n"
        "print(json.dumps({'files': files, 'catalog': data, 'is_link': os.path.islink(data)}))\n"
    )
    out = _run([bin_dir / "python", "-c", probe, json.dumps(_source_modules())], cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    venv_root = str(tmp / "venv")
    outside = {m: f for m, f in facts["files"].items() if not f.startswith(venv_root)}
    assert not outside, f"imported from outside the installed wheel: {outside}"
    assert not facts["is_link"]
    assert json.loads(Path(facts["catalog"]).read_text()) == json.loads((REPO / "model_ids.json").read_text())


def test_installed_list_shows_the_catalog(venv):
    tmp, bin_dir = venv
    out = _run([bin_dir / "gnconvert", "list", "--json"], cwd=tmp)
    assert out.returncode == 0, out.stderr
    ids = [row["id"] for row in json.loads(out.stdout)]
    expected = json.loads((REPO / "model_ids.json").read_text())
    expected_ids = [m["id"] for m in (expected["models"] if isinstance(expected, dict) else expected)]
    assert ids == expected_ids
    assert {"47261647", "48616381", "35861858"} <= set(ids)


def test_installed_selftest_passes(venv):
    tmp, bin_dir = venv
    (tmp / "selftest").mkdir()
    out = _run([bin_dir / "gnconvert", "selftest", "--workdir", tmp / "selftest"], cwd=tmp)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "selftest PASSED" in out.stdout
