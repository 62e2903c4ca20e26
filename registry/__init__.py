"""A model registry for TensorFlow checkpoints.

Importing this package is cheap on purpose: TensorFlow is loaded only by the
converter and the label service, never by the web app.
"""

__version__ = "0.1.0"
