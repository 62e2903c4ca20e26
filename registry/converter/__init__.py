"""Turning uploads into verified frozen graphs.

The modules that import TensorFlow (or its protos) are the ones ``child`` uses: ``graphs``,
``graphfile``, ``plan``, ``freeze``, ``checkpoint_keys``, ``tables``, ``vocabulary``, ``tf2``,
``upload_scan``, ``sample_inputs`` and ``verify``.  They run in a child process started by
``runner`` (which does not), so the web app and the worker's parent process stay light and a
hostile upload cannot take them down.
"""
