"""The conversion itself, run as ``python -m registry.converter.child REQUEST.json``.

Reads a request written by ``registry.converter.runner``, writes the frozen
graph and ``result.json`` into the work directory.  Runs in a child process
with the memory, CPU-time and file-size limits the parent asks for, which it
sets on itself before reading anything.

``python -m registry.converter.child --warm PARENT_PID`` is a worker's warm
template (``registry.converter.warm``): it imports TensorFlow once and forks
one process per request, which runs it as above (see :func:`warm`).

Somewhat over 400 lines: the child's one entry point holds every task it runs (convert, the
SavedModel build, the sandbox probe), its error handling and the warm template's fork loop, which
must all load together under the limits the child sets first.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from registry import cpus, heap
from registry.converter import ops
from registry.converter.memory import MemoryTrace, no_mark, unmap_freed_memory
from registry.converter.probe import probe
from registry.converter.runner import apply_limits
from registry.converter.sandbox import die_with_parent
from registry import signatures
from registry.converter.saved_model import build_archive
from registry.errors import ConversionError, RegistryError
from registry.uploads.archives import ArchiveLimits, safe_extract, saved_model_root
from registry.uploads.checks import unused_checkpoint_message


def _child_environment() -> None:
    """TensorFlow's settings for a converter child, before it imports TensorFlow: set when this module
    runs as the child, never on import (a process that imports it, a benchmark say, keeps its own)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN's allocator keeps what a session freed: the restored graph's variables would stay resident
    # while the frozen graph's constants load.  Verification runs each graph once; it needs no oneDNN speed.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # OpenBLAS (numpy's and scipy's, both loaded by TensorFlow's import) starts a thread server per library.
    # A warm template that forks beside those threads can hand its job a lock one of them held: the job
    # then waits forever (a conversion stuck so once in 76 loaded runs of the example-model tests).  With
    # one BLAS thread no server starts, so the template is single-threaded when it forks; a conversion
    # needs no parallel BLAS.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    cpus.release()  # started by a serving process whose threads stay on one CPU: a conversion uses them all


def convert(request: dict) -> dict:
    """Freeze, scan and verify one upload; return the result record."""
    # TensorFlow (and the modules that import it) load here, under the limits main() set first
    import tensorflow as tf

    from registry.converter import graphs, heads
    from registry.converter.checkpoint_keys import object_graph_keys, restore_key_map
    from registry.converter.freeze import global_step
    from registry.converter.plan import freeze_plan, graph_plan
    from registry.converter.tables import inline_tables
    from registry.converter.verify import describe_frozen, verify_signatures

    started = time.perf_counter()
    files = request["files"]
    source = request["source"]
    if source == "keras":
        return convert_keras(request, started)
    trace = MemoryTrace() if request.get("memory_trace") else None
    mark = trace.mark if trace else no_mark
    meta = graphs.load_meta_graph(Path(files["meta"])) if files.get("meta") else None
    checkpoint_prefix = files.get("checkpoint_prefix")
    whole_upload_flags: list[dict] = []
    plan = None
    if source == "saved_model":
        # Read as data and scanned whole; frozen below like a checkpoint. Nothing of it is loaded.
        plan, whole_upload_flags = saved_model_plan(request)
        graph_def, checkpoint_prefix = plan.graph_def, plan.checkpoint_prefix
    elif source == "frozen":
        graph_def = graphs.load_graph_def(Path(files["frozen"]), "frozen graph")
    elif files.get("graph"):
        graph_def = graphs.load_graph_def(Path(files["graph"]), "inference graph")
    elif meta is not None:
        graph_def = meta.graph_def
    else:
        raise ConversionError("nothing to convert: upload a .meta file, an inference graph or a frozen graph",
                              code="missing_graph")

    # A SavedModel was scanned whole already; checkpoints and GraphDefs are scanned here.
    upload_flags = whole_upload_flags if plan is not None else ops.scan(graphs.all_nodes(graph_def))["flags"]

    detected = False
    requested_inputs: list[str] = []
    if plan is None:
        requested = request.get("output_nodes") or []
        if requested:
            outputs = graphs.require_nodes(graph_def, requested, "output")
        else:
            outputs, detected = graphs.detect_outputs(graph_def), True
        if request.get("input_nodes"):
            requested_inputs = graphs.require_nodes(graph_def, request["input_nodes"], "input")
        # serving_default's inputs are known once the graph is frozen (the placeholders its outputs read)
        plan = graph_plan(graph_def, outputs, [], request.get("signatures"))

    mark("read and plan")
    # Lookups in constant-filled tables become plain ops: a frozen graph has no init ops to fill them.
    lookups_inlined = inline_tables(graph_def)
    # Keys can differ from node names; a Saver's restore ops say which key is which.
    key_map = restore_key_map(meta.graph_def) if meta is not None else {}
    key_map.update(restore_key_map(graph_def))
    if plan is not None and plan.object_graph is not None and checkpoint_prefix:
        for handle, key in object_graph_keys(graph_def, plan.object_graph, checkpoint_prefix).items():
            key_map.setdefault(handle, key)  # handles only the object graph ties to a key (Keras 3)
    # Deterministic: the same upload always gives the same bytes, hence the same sha256 and ETag.  The
    # freeze writes them as it goes, keeping the variables' values out of the graph it returns.
    output_path = Path(request["output_path"])
    freeze_started = time.perf_counter()
    if source != "saved_model":
        plan.graph_def = graph_def
        extra = [n for n in requested_inputs if n not in plan.nodes()]
        pruned, dropped = graphs.extract_subgraph(graph_def, plan.nodes() + extra)
        mark("prune")
        if source == "checkpoint+graph":
            require_checkpoint_use(graph_def, pruned, outputs, request.get("graph_filename") or "inference_graph")
        from registry.converter.freeze import freeze

        frozen, report = freeze(pruned, checkpoint_prefix, key_map, output_path)
        report.dropped_control_edges = dropped
    else:
        frozen, report, pruned = freeze_plan(plan, checkpoint_prefix, key_map, output_path)
    freeze_seconds = time.perf_counter() - freeze_started
    mark("freeze and write")
    uploaded_nodes, frozen_nodes = len(graph_def.node), len(frozen.node)
    frozen_scan = ops.scan(graphs.all_nodes(frozen))
    if whole_upload_flags:
        # A flagged op anywhere in a SavedModel flags the version, not only one in the frozen graph.
        frozen_scan["flags"] = merge_flags(frozen_scan["flags"], whole_upload_flags)
        frozen_scan["flagged"] = True
    if source == "saved_model":
        inputs = [_input_record(plan.signatures[plan.default]["inputs"], key) for key in
                  sorted(plan.signatures[plan.default]["inputs"])]
    else:
        names = requested_inputs or graphs.placeholders_read(frozen, plan.outputs)
        inputs = graphs.detect_inputs(frozen, names) if names else []
        plan.signatures[plan.default]["inputs"] = signatures.from_nodes(inputs, [])["inputs"]
    outputs = plan.outputs
    frozen_nodes_by_name = {n.name: n for n in frozen.node}
    del graph_def, meta  # verification needs the memory more than these

    tolerance = request["verify_tolerance"]
    if not request.get("verify", True):
        verifications = {name: {"status": "skipped", "reason": "verification turned off", "max_abs_diff": None,
                                "tolerance": tolerance} for name in plan.signatures}
    elif blocking := [f for f in frozen_scan["flags"] if f["op"] not in set(request.get("allowed_ops") or ())]:
        # Flagged graphs are never run, not even here: the model's admin-set allowlist is the only way in.
        reason = ("flagged: the graph contains ops that read or write files, reach the network, call Python "
                  "or are not on the inference allowlist, so it was not run: "
                  + ", ".join(f"{f['op']} ({f['category']})" for f in blocking))
        verifications = {name: {"status": "skipped", "reason": reason, "max_abs_diff": None, "tolerance": tolerance}
                         for name in plan.signatures}
    else:
        note = ("uploaded already frozen: ran it once, nothing to compare against" if source == "frozen" else
                "it has no variables, so freezing changed nothing to compare: ran it once")
        verifications = verify_signatures(output_path, pruned, checkpoint_prefix if report.variables else None,
                                          report.variable_keys, plan.signatures, tolerance, note, mark)
    if any("dtype" not in e or "shape" not in e for sig in plan.signatures.values()
           for side in ("inputs", "outputs") for e in sig[side].values()):
        describe_frozen(output_path, plan.signatures)
    for name, verification in verifications.items():
        if verification["status"] == "failed":
            plan.failed[name] = verification["reason"]
            del plan.signatures[name]
        else:
            plan.signatures[name]["verification"] = verification
    if not plan.signatures:
        raise ConversionError(verifications[plan.default]["reason"] if len(verifications) == 1 else
                              "no signature reproduces the original: " + "; ".join(
                                  f"{n}: {r}" for n, r in plan.failed.items()), code="verification_failed")
    if plan.default not in plan.signatures:
        plan.default = next(iter(plan.signatures))
        outputs = plan.outputs
        inputs = [_input_record(plan.signatures[plan.default]["inputs"], key) for key in
                  sorted(plan.signatures[plan.default]["inputs"])]
    verification = _overall(plan.signatures, plan.failed, tolerance)
    default_check = plan.signatures[plan.default].get("verification") or {}
    sizes = {o["name"]: (o["test_shape"][-1] if o.get("test_shape") else None)
             for o in default_check.get("outputs") or []}
    output_keys = {graphs.node_name(e["name"]): k for k, e in plan.signatures[plan.default]["outputs"].items()}
    chosen, why = heads.prediction_output(frozen_nodes_by_name, outputs,
                                          {n: sizes.get(output_keys.get(n)) for n in outputs},
                                          request.get("labels_count"))
    classes = _classes(plan.signatures[plan.default], output_keys.get(chosen), default_check)
    del frozen, frozen_nodes_by_name
    saved_model = None
    if request.get("saved_model_path"):
        build_archive(output_path, plan.signatures, Path(request["saved_model_path"]))
        saved_model = request["saved_model_path"]
    mark("done")
    return {
        "ok": True,
        "saved_model": saved_model,
        "output_nodes": outputs,
        "output_nodes_detected": detected,
        "input_nodes": inputs,
        "signature": plan.default if source == "saved_model" else None,
        "signatures": plan.signatures,
        "prediction_output": chosen,
        "tf_version": tf.__version__,
        "global_step": global_step(checkpoint_prefix) if report.variables else None,
        "conversion": {
            **({"signature": plan.default} if source == "saved_model" else {}),
            "verification": verification,
            "failed_signatures": plan.failed,
            "prediction_output": {"node": chosen, "reason": why, "classes": classes},
            "safety": {
                "op_histogram": frozen_scan["op_histogram"],
                "flags": frozen_scan["flags"],
                "flagged": frozen_scan["flagged"],
                "upload_flags": upload_flags,
            },
            "nodes": {"uploaded": uploaded_nodes, "frozen": frozen_nodes},
            "variables": report.variables,
            "variable_bytes": report.variable_bytes,
            "dropped_control_edges": report.dropped_control_edges,
            "lookups_inlined": lookups_inlined,
            "freeze_seconds": round(freeze_seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4),
            **({"memory": trace.record()} if trace else {}),
        },
    }


def require_checkpoint_use(graph_def, pruned, outputs: list[str], filename: str) -> None:
    """A checkpoint pushed with an inference graph must be read by it: a graph without variables (an
    already-frozen one), or outputs that read none of the graph's variables, would leave the
    checkpoint ignored and the version "ready" with weights nobody asked for.  The upload check
    (``registry.uploads.checks.check_checkpoint_used``) refuses a binary graph without variables
    first; this catches a text graph, and outputs that miss the variables."""
    from registry.converter.freeze import RESOURCE_VARIABLE_OPS, VARIABLE_OPS

    if any(node.op in VARIABLE_OPS | RESOURCE_VARIABLE_OPS for node in pruned.node):
        return
    count = sum(node.op in VARIABLE_OPS | RESOURCE_VARIABLE_OPS for node in graph_def.node)
    if not count:
        raise ConversionError(unused_checkpoint_message(filename), code="checkpoint_unused")
    raise ConversionError(
        f"the output(s) {', '.join(outputs)} read none of the inference graph's {count} variable(s), so the "
        "checkpoint would be ignored: name the outputs that read the model's weights. Pass output_nodes "
        "(comma-separated node names) with the push", code="checkpoint_unused")


def _classes(signature: dict, key: str | None, check: dict) -> int | None:
    """How many classes the prediction output ``key`` of ``signature`` scores per example: the last
    dimension of what it gave when verified, else of its declared shape (None: not known, or not one
    score per class, e.g. one value per example)."""
    ran = next((o["test_shape"] for o in check.get("outputs") or [] if o["name"] == key), None)
    shape = ran if ran is not None else (signature["outputs"].get(key) or {}).get("shape") if key else None
    return shape[-1] if shape and len(shape) >= 2 and isinstance(shape[-1], int) and shape[-1] > 0 else None


def _input_record(entries: dict, key: str) -> dict:
    """A SavedModel signature's input as input_nodes records it (name: its node)."""
    entry = entries[key]
    return {"name": entry["name"].split(":", 1)[0], "dtype": entry.get("dtype"), "shape": entry.get("shape"),
            "optional": bool(entry.get("optional"))}


def _overall(signatures_: dict, failed: dict, tolerance: float) -> dict:
    """The version's verification: its signatures' worst."""
    checks = {name: sig["verification"] for name, sig in signatures_.items()}
    passed = [c for c in checks.values() if c["status"] == "passed"]
    overall = dict(next(iter(checks.values())))
    overall.pop("outputs", None)
    if passed and len(passed) == len(checks):
        overall = {"status": "passed", "max_abs_diff": max(c["max_abs_diff"] for c in passed), "tolerance": tolerance}
    elif passed:
        skipped = {n: c.get("reason") or c.get("note") for n, c in checks.items() if c["status"] != "passed"}
        overall = {"status": "passed", "max_abs_diff": max(c["max_abs_diff"] for c in passed), "tolerance": tolerance,
                   "note": "not compared: " + "; ".join(f"{n} ({r})" for n, r in skipped.items())}
    if len(checks) > 1 or failed:
        overall["signatures"] = {n: {"status": c["status"], "max_abs_diff": c.get("max_abs_diff")}
                                 for n, c in checks.items()}
    if failed:
        overall["failed_signatures"] = sorted(failed)
    return overall


def merge_flags(*groups: list[dict]) -> list[dict]:
    """One flag per op across scans (counts added, a few example nodes kept)."""
    merged: dict[str, dict] = {}
    for flags in groups:
        for flag in flags:
            if flag["op"] in merged:
                entry = merged[flag["op"]]
                entry["count"] += flag["count"]
                entry["nodes"] = (entry["nodes"] + [n for n in flag["nodes"] if n not in entry["nodes"]])[:5]
            else:
                merged[flag["op"]] = {**flag, "nodes": list(flag["nodes"])}
    return [merged[op] for op in sorted(merged)]


def saved_model_plan(request: dict):
    """Unpack a pushed SavedModel archive, scan all of it, and plan the freeze of its signature."""
    from registry.converter import upload_scan  # TensorFlow: loads under the limits main() set
    from registry.converter.plan import saved_model_plan as plan_saved_model
    from registry.converter.vocabulary import inline_vocabulary_files

    folder = Path(request["output_path"]).parent / "uploaded_saved_model"
    limits = ArchiveLimits(request.get("max_archive_bytes", ArchiveLimits.max_bytes),
                           request.get("max_archive_files", ArchiveLimits.max_files))
    try:
        safe_extract(Path(request["files"]["saved_model_src"]), folder, limits)
        root = saved_model_root(folder)
    except RegistryError as exc:
        raise ConversionError(exc.message, code="unsafe_archive") from exc
    proto = upload_scan.read_saved_model(root)
    for meta in proto.meta_graphs:  # vocabulary files become constants: nothing will read them when served
        inline_vocabulary_files(meta, root)
    scan = upload_scan.scan_saved_model(proto)
    return plan_saved_model(proto, root, request.get("signature")), scan.flags


def convert_keras(request: dict, started: float) -> dict:
    """A Keras file: its configuration scanned whole, then (only if clean) loaded and frozen."""
    # TensorFlow (and the modules that import it) load here, under the limits main() set first
    import tensorflow as tf

    from registry.converter import graphs, tf2
    from registry.converter.verify import describe_frozen

    freeze_started = time.perf_counter()
    frozen, config_scan = tf2.from_keras(Path(request["files"]["keras"]), request["verify_tolerance"],
                                         request.get("allowed_ops") or ())
    freeze_seconds = time.perf_counter() - freeze_started
    output_path = Path(request["output_path"])
    output_path.write_bytes(frozen.graph_def.SerializeToString(deterministic=True))
    scan = ops.scan(graphs.all_nodes(frozen.graph_def))
    flags = merge_flags(scan["flags"], config_scan["flags"])
    inputs = graphs.detect_inputs(frozen.graph_def, frozen.inputs)
    signature_map = {signatures.DEFAULT: signatures.from_nodes(inputs, frozen.outputs)}
    describe_frozen(output_path, signature_map)
    signature_map[signatures.DEFAULT]["verification"] = frozen.verification
    first = frozen.outputs[0] if frozen.outputs else None
    key = next((k for k, e in signature_map[signatures.DEFAULT]["outputs"].items()
                if graphs.node_name(e["name"]) == first), None)
    classes = _classes(signature_map[signatures.DEFAULT], key, frozen.verification or {})
    saved_model = None
    if request.get("saved_model_path"):
        build_archive(output_path, signature_map, Path(request["saved_model_path"]))
        saved_model = request["saved_model_path"]
    return {
        "ok": True,
        "saved_model": saved_model,
        "output_nodes": frozen.outputs,
        "output_nodes_detected": True,
        "input_nodes": inputs,
        "signatures": signature_map,
        "prediction_output": first,
        "tf_version": tf.__version__,
        "conversion": {
            "verification": frozen.verification,
            **({"prediction_output": {"node": first, "classes": classes,
                                      "reason": "its only output" if len(frozen.outputs) == 1 else
                                      "the first output of the Keras model"}} if first else {}),
            "safety": {"op_histogram": scan["op_histogram"], "flags": flags, "flagged": bool(flags),
                       "upload_flags": config_scan["flags"]},
            "nodes": {"uploaded": None, "frozen": len(frozen.graph_def.node)},
            "variables": None,
            "variable_bytes": None,
            "dropped_control_edges": 0,
            "freeze_seconds": round(freeze_seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4),
        },
    }


def build_saved_model(request: dict) -> dict:
    """Only the SavedModel of an already-frozen version (versions frozen before SavedModels existed)."""
    build_archive(Path(request["frozen_path"]), request["signatures"],
                  Path(request["saved_model_path"]))
    return {"ok": True, "saved_model": request["saved_model_path"]}


TASKS = {"convert": convert, "saved_model": build_saved_model}


def _is_memory_failure(exc: Exception) -> bool:
    """Under the address-space limit TensorFlow fails to map its libraries or allocate, and protobuf
    fails to serialize a message it has no room to write (graphs over protobuf's 2 GiB are refused
    before that, by ``freeze.check_graph_def_size``)."""
    text = str(exc)
    if type(exc).__name__ == "EncodeError" and "Failed to serialize proto" in text:
        return True
    return any(m in text for m in ("failed to map segment", "Cannot allocate memory", "bad_alloc", "OOM",
                                   "alloc failed"))


def warm(parent: int) -> int:
    """The warm template of ``registry.converter.warm``: import TensorFlow, then fork one process per
    request path read from stdin and report how it ended.  The template never reads an upload; each
    forked process sets its limits and enters its sandbox (``main``) before it does."""
    die_with_parent(parent)
    import tensorflow  # noqa: F401  (what each conversion would otherwise wait for)

    from registry.converter import (  # noqa: F401
        checkpoint_keys, freeze, graphfile, graphs, heads, memory, plan, sample_inputs, tables, tf2, verify, vocabulary,
    )

    # What the imports made is never garbage: each fork's collections skip it (a full collection between the
    # verification's two graphs scanned all of TensorFlow's objects), and its pages stay shared with the template.
    heap.own_process()
    heap.freeze_imports()
    os.write(1, b"ready\n")
    while line := sys.stdin.buffer.readline().strip():
        request_path = Path(os.fsdecode(line))
        pid = os.fork()
        if pid == 0:
            _run_forked(request_path)
        os.write(1, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    return 0


def _run_forked(request_path: Path) -> None:
    """In the forked process: its own session (the runner kills its group on a timeout), its output in
    the job's log, nothing of the template's pipes, then the job, as a cold child runs it."""
    code = 70
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request_path.parent / "converter.log", os.O_WRONLY | os.O_APPEND)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request_path.parent)
        tempfile.tempdir = None  # the sandbox points TMPDIR at the work directory
        code = main([sys.argv[0], str(request_path)], parent=os.getppid())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str], parent: int | None = None) -> int:
    """Run the request ``argv[1]`` names; ``parent`` is the process to die with when it is not the
    runner that wrote the request (a warm child's fork dies with the warm child)."""
    unmap_freed_memory()
    request = json.loads(Path(argv[1]).read_text())
    result_path = Path(request["result_path"])
    sandbox = None
    try:
        if "limits" in request:  # limits and sandbox, before anything reads the upload
            limits = request["limits"] if parent is None else {**request["limits"], "parent": parent}
            sandbox = apply_limits(limits)
        if request.get("task") == "sandbox_probe":  # what the sandbox lets through (tests, diagnostics)
            task = probe
        else:
            task = TASKS[request.get("task", "convert")]
        result = task(request)
    except ConversionError as exc:
        if _is_memory_failure(exc):  # a parse that could not allocate is no broken upload
            result = {"ok": False, "error": {"code": "out_of_memory", "message": exc.message}}
        else:
            result = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    except MemoryError:
        result = {"ok": False, "error": {"code": "out_of_memory", "message": "conversion ran out of memory"}}
    except Exception as exc:  # unexpected: report it with its trace for the logs
        if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE fails with EFBIG instead.
            result = {"ok": False, "error": {"code": "output_too_large", "message": str(exc)}}
        elif _is_memory_failure(exc):
            result = {"ok": False, "error": {"code": "out_of_memory", "message": str(exc)}}
        else:
            result = {
                "ok": False,
                "unexpected": True,
                "error": {"code": "converter_crashed", "message": f"{type(exc).__name__}: {exc}"},
                "traceback": traceback.format_exc(),
            }
    if sandbox is not None:
        result["sandbox"] = sandbox
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    _child_environment()
    sys.exit(warm(int(sys.argv[2])) if sys.argv[1:2] == ["--warm"] else main(sys.argv))
