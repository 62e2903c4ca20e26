"""Hold back TensorFlow's native start-up lines (oneDNN, CUDA drivers, CPU features) while it loads.

TensorFlow 2.21 writes them to file descriptor 2 from C++ before absl logging is set up, so
``TF_CPP_MIN_LOG_LEVEL`` does not hold them back.  While TensorFlow loads, descriptor 2 points at a
temporary file instead; what was written there is shown only when loading fails, or when
``REGISTRY_NATIVE_LOGS=1`` (which ``registry --verbose`` sets for itself and its child processes).

Call it only while no other thread or child process may start: a child started meanwhile would keep
the temporary file as its standard error.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

SHOW_ENV = "REGISTRY_NATIVE_LOGS"


@contextmanager
def held_back() -> Iterator[None]:
    """Descriptor 2 into a temporary file for the block; replayed if the block fails."""
    if os.environ.get(SHOW_ENV) == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))
