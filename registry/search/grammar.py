"""The search filter grammar, parsed by hand (recursive descent) into a small tree.

    filter     := or
    or         := and ("OR" and)*
    and        := unary ("AND" unary)*
    unary      := "NOT" unary | "(" or ")" | comparison
    comparison := field op value | field ["NOT"] "IN" "(" value ("," value)* ")"
    field      := name | version | status | source | alias | created_at | tags.KEY | tags."KEY"
    op         := = | != | < | <= | > | >= | LIKE | ILIKE
    value      := 'text' | "text" | number

Keywords are case-insensitive; a string doubles its quote to hold one ('it''s').  A mistake raises
:class:`FilterError` with the 1-based column where the parser stopped and what it expected there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "LIKE", "ILIKE", "IN", "NOT IN")
TOKEN = re.compile(r"""\s*(?:(?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")|(?P<number>-?\d+(?:\.\d+)?)(?![\w.])
                      |(?P<op><=|>=|!=|<>|=|<|>)|(?P<punct>[(),])|(?P<word>[A-Za-z_][\w]*(?:\.(?:[\w\-]+|"(?:[^"]|"")*"))?)
                      |(?P<bad>\S))""", re.VERBOSE)
KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "ILIKE"}


class FilterError(ValueError):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.message, self.column = message, column


@dataclass(frozen=True)
class Comparison:
    field: str  # name, version, ..., or "tags.KEY"
    op: str  # one of OPERATORS
    value: object  # str, int, float, or a tuple of them for IN
    column: int


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND, OR
    parts: tuple


@dataclass(frozen=True)
class Not:
    part: object


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, op, punct, word, keyword, end
    text: str
    value: object
    column: int


def tokenize(text: str) -> list[Token]:
    tokens, at = [], 0
    while at < len(text) and text[at:].strip():
        match = TOKEN.match(text, at)
        kind = match.lastgroup
        raw, column = match.group(kind), match.start(kind) + 1
        if kind == "bad":
            raise FilterError(f"unexpected {raw!r}", column)
        if kind == "string":
            value = raw[1:-1].replace(raw[0] * 2, raw[0])
        elif kind == "number":
            value = float(raw) if "." in raw else int(raw)
        elif kind == "word" and raw.upper() in KEYWORDS:
            kind, value = "keyword", raw.upper()
        else:
            value = "!=" if raw == "<>" else raw
        tokens.append(Token(kind, raw, value, column))
        at = match.end()
    tokens.append(Token("end", "", None, len(text) + 1))
    return tokens


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.at = 0

    def peek(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        self.at += 1
        return self.tokens[self.at - 1]

    def keyword(self, word: str) -> bool:
        if self.peek().kind == "keyword" and self.peek().value == word:
            self.at += 1
            return True
        return False

    def expect(self, text: str, what: str) -> Token:
        token = self.take()
        if token.text != text:
            raise FilterError(f"expected {what}, found {_shown(token)}", token.column)
        return token

    def parse(self):
        if self.peek().kind == "end":
            raise FilterError("the filter is empty: e.g. status = 'ready'", 1)
        tree = self.disjunction()
        if self.peek().kind != "end":
            raise FilterError(f"expected AND, OR or the end, found {_shown(self.peek())}", self.peek().column)
        return tree

    def disjunction(self):
        parts = [self.conjunction()]
        while self.keyword("OR"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def conjunction(self):
        parts = [self.unary()]
        while self.keyword("AND"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def unary(self):
        if self.keyword("NOT"):
            return Not(self.unary())
        if self.peek().text == "(":
            self.take()
            inner = self.disjunction()
            self.expect(")", "')' to close the '('")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        field = self.take()
        if field.kind != "word":
            raise FilterError(f"expected a field (name, version, status, source, alias, created_at or "
                              f"tags.KEY), found {_shown(field)}", field.column)
        negated = self.keyword("NOT")
        op = self.take()
        if op.kind == "keyword" and op.value == "IN":
            self.expect("(", "'(' after IN")
            values = [self.value()]
            while self.peek().text == ",":
                self.take()
                values.append(self.value())
            self.expect(")", "',' or ')' in the IN list")
            return Comparison(field.text, "NOT IN" if negated else "IN", tuple(values), field.column)
        if negated:
            raise FilterError(f"expected IN after NOT, found {_shown(op)}", op.column)
        if op.kind == "op" or (op.kind == "keyword" and op.value in ("LIKE", "ILIKE")):
            return Comparison(field.text, op.value, self.value(), field.column)
        raise FilterError(f"expected an operator ({', '.join(OPERATORS)}), found {_shown(op)}", op.column)

    def value(self):
        token = self.take()
        if token.kind not in ("string", "number"):
            raise FilterError(f"expected a value ('text' or a number), found {_shown(token)}", token.column)
        return token.value


def _shown(token: Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def parse(text: str):
    """The tree of ``text``; FilterError (with a column) when it is not a filter."""
    return Parser(text or "").parse()
