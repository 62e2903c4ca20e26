"""Turning uploads into verified frozen graphs.

Only ``graphs``, ``freeze``, ``verify`` and ``child`` import TensorFlow, and
they run in a child process started by ``runner`` (which does not), so the web
app and the worker's parent process stay light and a hostile upload cannot
take them down.
"""
