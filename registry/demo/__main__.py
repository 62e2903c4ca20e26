"""``python -m registry.demo train OUTDIR``: the demo's training child (see :mod:`registry.demo.train`)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from registry import cpus


def _exit_when_orphaned() -> None:
    """Stop training when the registry that started us is gone (it kills us when it stops, unless killed itself)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "train":
        print("usage: python -m registry.demo train OUTDIR", file=sys.stderr)
        return 2
    cpus.release()  # started by a serving process whose threads stay on one CPU: training uses them all
    _exit_when_orphaned()
    from registry.demo.train import train  # TensorFlow loads only now, with the orphan watch on

    manifest = train(Path(argv[1]))
    print(json.dumps({v["role"]: {"heldout": v["heldout_accuracy"], "samples": v["sample_accuracy"]}
                      for v in manifest["versions"]} | {"train_seconds": manifest["train_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
