"""The label service: run registered versions, compare them, and speak
TensorFlow Serving's REST and gRPC APIs.

``rest`` and ``images`` import no TensorFlow; ``loader``, ``preprocess`` and
``service`` load it lazily on the first request that needs a graph.
"""
