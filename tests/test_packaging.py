"""What ``pip install`` puts into site-packages, and the version ranges it requires."""

import os
import shutil
import subprocess
import sys
import zipfile

from keras_diffusion import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_wheel(tmp_path):
    """Builds the wheel from a copy of the clone (the build writes next to ``setup.py``)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source)
    for name in ("keras_diffusion", "models", "scripts"):
        shutil.copytree(os.path.join(ROOT, name), source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("keras_diffusion-*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_installs_only_the_library_with_the_tested_keras_and_tensorflow(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = wheel.namelist()
    top_level = {name.split("/")[0] for name in names}
    (dist_info,) = top_level - {"keras_diffusion"}
    assert top_level == {"keras_diffusion", dist_info} and dist_info.endswith(".dist-info")
    assert "keras_diffusion/curvature/solvers.py" in names
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    requires = {line.split(": ", 1)[1].replace(" ", "")
                for line in metadata.splitlines() if line.startswith("Requires-Dist: ")}
    # setup.py pins the ranges compat.py was checked against (in either order of bounds).
    for package, bounds in (("keras", compat.TESTED_KERAS),
                            ("tensorflow", compat.TESTED_TENSORFLOW)):
        pins = [r for r in requires if r.startswith(package) and r[len(package)] in "<>="]
        assert len(pins) == 1, requires
        assert set(pins[0][len(package):].split(",")) == set(bounds), pins
