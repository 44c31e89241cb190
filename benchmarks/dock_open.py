"""What opening the "DatUS pipeline" dock costs a user: seconds and whether torch came with it.

Usage (needs a display; under Xvfb: ``QT_QPA_PLATFORM=xcb xvfb-run -a``)::

    python benchmarks/dock_open.py [--rounds 3] [--baseline OLD_SRC]

Each round is a fresh process that shows a napari viewer (the canvas exists), then times
``viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")``: the plugin's
imports and the widget's construction, as a user opening it from the Plugins menu waits for
them. ``--baseline`` is a folder holding another version of ``napari_datus`` (an older
commit's ``src`` from ``git archive``), timed in the same rounds. Prints a table and writes
``benchmarks/results/dock_open.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "dock_open.json"
PROBE = """
import sys, time
import napari
viewer = napari.Viewer()
start = time.perf_counter()
viewer.window.add_plugin_dock_widget("napari-datus", "DatUS pipeline")
print(time.perf_counter() - start, "torch" in sys.modules)
viewer.close()
"""


def open_once(env: dict[str, str]) -> tuple[float, bool]:
    """Seconds to open the dock in a fresh process, and whether torch was imported."""
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True)
    seconds, torch = done.stdout.split()[-2:]
    return float(seconds), torch == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path)
    args = parser.parse_args()
    versions = {"this checkout": dict(os.environ)}
    if args.baseline is not None:
        versions[f"baseline {args.baseline}"] = {
            **os.environ, "PYTHONPATH": os.pathsep.join(
                [str(args.baseline), *filter(None, [os.environ.get("PYTHONPATH")])])}
    runs: dict[str, list[tuple[float, bool]]] = {name: [] for name in versions}
    for _ in range(args.rounds):
        for name, env in versions.items():
            runs[name].append(open_once(env))
    print("| version | seconds, median [range] | torch imported |\n|---|---|---|")
    for name, rows in runs.items():
        seconds = [s for s, _ in rows]
        print(f"| {name} | {statistics.median(seconds):.2f} [{min(seconds):.2f}-"
              f"{max(seconds):.2f}] | {any(t for _, t in rows)} |")
    RESULTS.write_text(json.dumps({"command": "python " + " ".join(sys.argv),
                                   "rounds": args.rounds, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
