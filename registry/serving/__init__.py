"""The label service: run registered versions, compare them, and speak
TensorFlow Serving's REST and gRPC APIs.

``rest`` and ``images`` import no TensorFlow; ``service``, ``loader`` and
``preprocess`` load it lazily on the first request that needs a graph.  Graphs
themselves run in inference worker processes (``workers`` supervises them,
``inference`` is their program, ``wire`` what they exchange).
"""
