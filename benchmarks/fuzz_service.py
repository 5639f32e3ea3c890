"""Fuzz the service with schemathesis against its own OpenAPI document (``/docs.json``), every check on.

Starts a real ``bentoml serve`` of an export (:class:`serve.launcher.Server`, 127.0.0.1, a free port),
runs ``schemathesis run URL/docs.json --checks all`` (schema conformance of every response, status codes,
content types, no 5xx, undeclared methods, ...) and prints its summary line and the server's 5xx count.

Usage::

    python -m benchmarks.fuzz_service runs/default/export --max-examples 1000

Exit status: schemathesis's (0 = no failure). Needs the ``test`` extra (schemathesis).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def fuzz(export_dir: str | Path, max_examples: int = 1000, seed: int | None = None,
         log_path: Path | None = None) -> dict:
    """Run schemathesis against a served export.

    Returns:
        ``{"returncode", "generated", "passed", "failures", "server_5xx", "summary", "output"}``
        (``generated``/``passed`` from schemathesis's "Test cases" line; ``server_5xx`` from the access log).

    Raises:
        FileNotFoundError: schemathesis is not installed (``pip install -e .[test]``).
    """
    from serve.launcher import Server

    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(exe).exists():
        raise FileNotFoundError("schemathesis is not installed: pip install 'schemathesis>=4,<5' (the test extra)")
    with Server(export_dir, ready_timeout_s=120, log_path=log_path) as srv:
        cmd = [exe, "run", f"{srv.url}/docs.json", "--checks", "all", "--max-examples", str(max_examples),
               "--no-color"] + (["--seed", str(seed)] if seed is not None else [])
        with tempfile.TemporaryDirectory() as scratch:  # schemathesis writes .schemathesis/ in its cwd
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=scratch)
        log = srv.log_tail(10**8)
    out = res.stdout + res.stderr
    m = re.search(r"(\d+) generated, (\d+) (?:passed|found)", out)
    gen = int(m.group(1)) if m else 0
    passed = int(m.group(2)) if m and "passed" in m.group(0) else 0
    fails = re.search(r"(\d+) found (\d+) unique failures", out)
    summary = next((ln.strip("= ") for ln in reversed(out.splitlines()) if ln.startswith("=")), "")
    return {"returncode": res.returncode, "generated": gen, "passed": passed,
            "failures": int(fails.group(2)) if fails else 0, "server_5xx": len(re.findall(r"status=5\d\d", log)),
            "summary": summary, "output": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="export folder (or a run folder with export/)")
    ap.add_argument("--max-examples", type=int, default=1000, help="schemathesis examples per operation")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    r = fuzz(a.export, a.max_examples, a.seed)
    if r["returncode"] != 0:
        print(r["output"][-6000:])
    print(f"schemathesis --checks all: {r['generated']} requests generated, {r['passed']} passed, "
          f"{r['failures']} unique failures; server answered {r['server_5xx']} with a 5xx ({r['summary']})")
    return r["returncode"]


if __name__ == "__main__":
    sys.exit(main())
