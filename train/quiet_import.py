"""Import Keras/TensorFlow without the start-up lines TensorFlow's C++ side writes to stderr.

TensorFlow's absl logging prints a few INFO lines at import ("All log messages before
absl::InitializeLog() …", "oneDNN custom operations are on …", CPU feature notices) before any
log level applies, so ``TF_CPP_MIN_LOG_LEVEL`` cannot hide them. During the import, file
descriptor 2 goes to a temporary file; afterwards every line except those known notices is
written back to stderr, so real warnings and errors still show.
"""

from __future__ import annotations

import os
import sys
import tempfile

NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "rebuild TensorFlow with the appropriate compiler flags",
)


def import_keras():
    """``import keras`` (TensorFlow backend), minus TensorFlow's start-up notices."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (some notebooks): plain import
        import keras

        return keras
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  (its C++ start-up is what prints)
            import keras
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not any(noise in line for noise in NOISE)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return keras
