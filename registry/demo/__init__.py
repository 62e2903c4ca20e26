"""The demo model ``digits``, seeded on first start so a new registry has something to show.

* ``seed.py``: decide whether to seed, run the training child, push its versions, set aliases
  (the web process's half: no TensorFlow);
* ``train.py``: the training child itself (``python -m registry.demo train OUTDIR``: TensorFlow,
  numpy and scikit-learn).
"""
