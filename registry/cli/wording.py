"""Server wording meant for HTTP clients, said the CLI's way: the option to pass or the command to
type instead of a form field, a request body or an HTTP request.

The server's messages name what an HTTP client sends ('graph', ``signature=NAME``,
``DELETE /api/...``); a CLI user types options and commands.  :func:`for_cli` rewrites the phrases
the server is known to use, both in refusals (a ``ClientError``) and in a failed version's status
message; anything it does not know passes unchanged.
"""

from __future__ import annotations

import re

# form field -> what a `registry push` user passes for it
FIELDS = {
    "graph": "--graph", "frozen": "--frozen", "labels": "--labels", "saved_model": "--saved-model",
    "keras": "--keras", "meta": "checkpoint's .meta", "index": "checkpoint's .index",
    "data": "checkpoint's .data-*", "signatures": "--signatures",
}

REWRITES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"DELETE /api/v1/models/([^/\s:]+)/versions/(\d+)"), r"registry delete \1:\2"),
    (re.compile(r"pass signature=NAME with the push"), "push again with --signature NAME"),
    (re.compile(r"send it as 'meta'"), "push its checkpoint (PREFIX, with PREFIX.meta beside PREFIX.index) "
                                       "instead"),
    (re.compile(r"send that as 'graph' \(inference graph\) or 'frozen'"),
     "push it with --graph (an inference graph, with the checkpoint) or --frozen"),
    (re.compile(r"or a binary \.meta as 'meta'"), "or the checkpoint's binary .meta"),
    (re.compile(r"send the graph alone as 'frozen', without the checkpoint"),
     "push the graph alone with --frozen, without the checkpoint prefix"),
    (re.compile(r"send the inference graph as a binary \.pb or a text \.pbtxt"),
     "--graph takes an inference graph as a binary .pb or a text .pbtxt"),
    (re.compile(r"\b[Pp]ush the inference graph exported for serving as 'graph' with the checkpoint"),
     "push again with --graph INFERENCE_GRAPH.pb beside the checkpoint prefix"),
    (re.compile(r"\bor pass output_nodes \(comma-separated node names\) with the push"),
     "or with --output-nodes NAME[,NAME...]"),
    (re.compile(r"\bPass output_nodes \(comma-separated node names\) with the push"),
     "Push again with --output-nodes NAME[,NAME...]"),
    (re.compile(r"leave out output_nodes and input_nodes"), "leave out --output-nodes and --input-nodes"),
    (re.compile(r"the '(" + "|".join(FIELDS) + r")' file"), lambda m: f"the {FIELDS[m[1]]} file"),
    (re.compile(r" ?\(multipart field 'image'\)"), ""),
    (re.compile(r'send "reason"'), "pass --reason"),
    (re.compile(r"send Authorization: Bearer <token> \(REGISTRY_TOKEN for the CLI;"),
     "pass --token TOKEN (or set REGISTRY_TOKEN;"),
    (re.compile(r"send Authorization: Bearer rgt_…"), "pass --token rgt_… (or set REGISTRY_TOKEN)"),
    (re.compile(r"send the token as Authorization: Bearer rgt_…"), "pass it with --token rgt_… (or set REGISTRY_TOKEN)"),
    (re.compile(r"send one of them as signature_name"), "pass one of them with --signature"),
    # evaluation sets (registry.evaluation.sets, registry.evaluation.formats)
    (re.compile(r"POST /api/v1/models/([^/\s]+)/eval-sets/([^/\s)]+)"), r"registry eval-set add \1 \2 FILE"),
    (re.compile(r"\blabel_feature\b"), "--label-feature"),
]


def for_cli(message: str) -> str:
    """``message`` with the HTTP client's wording it is known to use replaced by the CLI's."""
    for pattern, replacement in REWRITES:
        message = pattern.sub(replacement, message)
    return message


__all__ = ["for_cli"]
