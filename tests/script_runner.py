"""Runs a script of ``scripts/`` as a user of a clone does: ``python scripts/<name>.py``.

``PYTHONPATH`` is removed from the environment: the script must find the clone's ``models``
and ``scripts`` itself (they are not installed, see ``setup.py``).
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(name, args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return dict(args=[sys.executable, os.path.join(ROOT, "scripts", name), *args], cwd=ROOT,
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_script(name, *args, timeout=300):
    """``subprocess.run`` of ``scripts/<name>`` with ``args``; returns the completed process."""
    return subprocess.run(**_command(name, args), timeout=timeout)


def start_script(name, *args):
    """``subprocess.Popen`` of ``scripts/<name>`` with ``args`` (as ``run_script``), for
    scripts that run side by side (the workers of one cluster)."""
    return subprocess.Popen(**_command(name, args))
