"""Pushing a version: untrusted files received as streams, checked, then registered.

* ``multipart.py``: the push's multipart body, each part streamed into its own blob writer;
* ``files.py``: an uploaded part on its way into blob storage (head, tail, wire scan, spool);
* ``protowire.py``: the streaming protobuf wire check (a GraphDef's ops, without TensorFlow);
* ``archives.py``: safe extraction and checks of SavedModel and Keras archives;
* ``checks.py``: what a push must be: the right files, each what it claims;
* ``pushing.py``: publish the blobs and register the version with its queued conversion.

Nothing here imports TensorFlow; the converter's child process uses ``archives``.
"""
