"""The text form of a segment definition: a hand-written recursive-descent parser and a printer.

Grammar (keywords are lower case; `name` is a bare word such as `newsletter`, `product.sku` or
`external:crm_id`, or a double-quoted string):

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | primary
    primary    := "(" expr ")"
                | "trait" "(" name ")" op_tail
                | "has" "(" name ")" | "has_no" "(" name ")"
                | "consent" "(" name "," name ")" "=" name
                | "in_segment" "(" name ")"
                | "performed" "(" string ("," "type" ":" name)? ("," name op_tail)* ")"
                      window? measure?
                | ("sum"|"avg"|"min"|"max"|"count") "(" string "," (name | "*")
                      ("," name op_tail)* ")" window? number_tail
    op_tail    := ("=" | "!=" | "<" | "<=" | ">" | ">=") value | "between" value "and" value
                | "in" "(" value ("," value)* ")" | "contains" value | "starts_with" value
                | "exists" | "not_exists"
    window     := "." "within" "(" duration ")" | "." "between" "(" time "," time ")"
    measure    := "." "count" "(" ")" number_tail
                | "." "count" "(" "every" unit "," "last" integer unit ")" number_tail
                | "." ("first" | "last") "(" ")" ("before" | "after") (time | duration "ago")
    number_tail:= ("=" | "!=" | "<" | "<=" | ">" | ">=") number | "between" number "and" number
    value      := string | number | "true" | "false" | time
    time       := "time" "(" string ")"          an ISO 8601 instant; a bare date is UTC midnight
    duration   := 30d | 12h | 15m | 45s | 2w     (decimals allowed, e.g. 1.5h)

`not` binds tighter than `and`, which binds tighter than `or`. The printer emits the canonical
form, which parses back to the same tree (groups of one condition print as that condition).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from upm_common.errors import InvalidArgumentError
from upm_segment import model as m
from upm_segment.validate import validate

KEYWORDS = frozenset(
    {
        "and",
        "or",
        "not",
        "true",
        "false",
        "between",
        "in",
        "contains",
        "starts_with",
        "exists",
        "not_exists",
        "time",
        "ago",
        "before",
        "after",
        "every",
        "last",
        "type",
    }
)
BARE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z0-9_]+)*$")
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<duration>\d+(?:\.\d+)?[smhdw](?![A-Za-z0-9_]))
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:[.:][A-Za-z0-9_]+)*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<op><=|>=|!=|=|<|>)
  | (?P<punct>[(),.:*])
    """,
    re.VERBOSE,
)
_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_OPS = {
    "=": m.Operator.EQ,
    "!=": m.Operator.NEQ,
    "<": m.Operator.LT,
    "<=": m.Operator.LTE,
    ">": m.Operator.GT,
    ">=": m.Operator.GTE,
}
_OPS_BACK = {value: key for key, value in _OPS.items()}
_PERIOD_WORDS = {
    "day": m.PeriodUnit.DAY,
    "days": m.PeriodUnit.DAY,
    "week": m.PeriodUnit.WEEK,
    "weeks": m.PeriodUnit.WEEK,
    "month": m.PeriodUnit.MONTH,
    "months": m.PeriodUnit.MONTH,
}
_FUNCTIONS = {f.value: f for f in m.AggregateFunction}


class ParseError(Exception):
    """The text is not a valid definition; `line` and `column` start at 1."""

    def __init__(self, message: str, text: str, offset: int) -> None:
        self.message = message
        self.offset = offset
        self.line = text.count("\n", 0, offset) + 1
        self.column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        line_text = text.splitlines()[self.line - 1] if text.strip() else ""
        self.pointer = f"{line_text}\n{' ' * (self.column - 1)}^"
        super().__init__(f"line {self.line}, column {self.column}: {message}")

    def to_invalid_argument(self, field: str = "text") -> InvalidArgumentError:
        return InvalidArgumentError.for_field(field, str(self))


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    offset: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ParseError(f"unexpected character {text[position]!r}", text, position)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _describe(token: _Token) -> str:
    return "the end of the text" if token.kind == "end" else repr(token.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0

    # --- token helpers ---------------------------------------------------------------------

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def error(self, message: str, token: _Token | None = None) -> ParseError:
        return ParseError(message, self.text, (token or self.token).offset)

    def advance(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def at(self, text: str) -> bool:
        return self.token.kind in ("name", "op", "punct") and self.token.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.index += 1
            return True
        return False

    def expect(self, text: str) -> _Token:
        if not self.at(text):
            raise self.error(f"expected {text!r} but found {_describe(self.token)}")
        return self.advance()

    # --- grammar ---------------------------------------------------------------------------

    def parse(self) -> m.Condition:
        if self.token.kind == "end":
            raise self.error("the definition is empty")
        condition = self.expr()
        if self.token.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end but found {_describe(self.token)}")
        return condition

    def expr(self) -> m.Condition:
        items = [self.and_expr()]
        while self.accept("or"):
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else m.Or(tuple(items))

    def and_expr(self) -> m.Condition:
        items = [self.unary()]
        while self.accept("and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else m.And(tuple(items))

    def unary(self) -> m.Condition:
        if self.accept("not"):
            return m.Not(self.unary())
        return self.primary()

    def primary(self) -> m.Condition:
        start = self.token
        if self.accept("("):
            inner = self.expr()
            self.expect(")")
            return inner
        if start.kind != "name":
            raise self.error(f"expected a condition but found {_describe(start)}")
        word = start.text
        self.advance()
        node: m.Condition
        if word == "trait":
            self.expect("(")
            name = self.name("a trait name")
            self.expect(")")
            operator, values = self.op_tail()
            node = m.TraitCondition(name, operator, values)
        elif word in ("has", "has_no"):
            self.expect("(")
            kind = self.name("an identifier type")
            self.expect(")")
            node = m.IdentifierCondition(kind, word == "has")
        elif word == "consent":
            self.expect("(")
            channel = self.name("a channel")
            self.expect(",")
            purpose = self.name("a purpose (marketing or transactional)")
            self.expect(")")
            self.expect("=")
            status = self.name("a status (subscribed, unsubscribed or unknown)")
            node = m.ConsentCondition(channel, purpose, status)
        elif word == "in_segment":
            self.expect("(")
            node = m.SegmentCondition(self.name("a segment id"))
            self.expect(")")
        elif word == "performed":
            node = self.event()
        elif word in _FUNCTIONS:
            node = self.aggregate(_FUNCTIONS[word])
        else:
            raise self.error(
                f"unknown condition {word!r}; expected trait, has, has_no, consent, in_segment, "
                "performed, sum, avg, min, max or count",
                start,
            )
        problems = validate(node, path="")
        if problems:
            raise self.error(problems[0].description, start)
        return node

    def event(self) -> m.EventCondition:
        self.expect("(")
        name = self.string("an event name")
        event_type: str | None = None
        filters: list[m.PropertyFilter] = []
        while self.accept(","):
            if self.at("type") and self.tokens[self.index + 1].text == ":":
                self.index += 2
                event_type = self.name("an event type")
            else:
                filters.append(self.property_filter())
        self.expect(")")
        window = self.window()
        measure: m.Measure = m.CountMeasure()
        if self.at(".") and self.tokens[self.index + 1].text in ("count", "first", "last"):
            self.advance()
            which = self.advance().text
            self.expect("(")
            if which == "count":
                every = None
                if self.accept("every"):
                    unit_token = self.token
                    unit = self.period_unit()
                    self.expect(",")
                    self.expect("last")
                    count = self.integer()
                    if self.period_unit() is not unit:
                        raise self.error("the period units must match", unit_token)
                    every = m.Periodicity(unit, count)
                self.expect(")")
                measure = m.CountMeasure(self.number_tail(), every)
            else:
                self.expect(")")
                if not (self.at("before") or self.at("after")):
                    raise self.error(
                        f"expected 'before' or 'after' but found {_describe(self.token)}"
                    )
                relation = self.advance().text
                if self.at("time"):
                    bound = m.TimeBound(relation, time=self.time())
                else:
                    ago = self.duration()
                    self.expect("ago")
                    bound = m.TimeBound(relation, ago=ago)
                measure = m.FirstLastMeasure(which, bound)
        return m.EventCondition(name, event_type, tuple(filters), window, measure)

    def aggregate(self, function: m.AggregateFunction) -> m.AggregateCondition:
        self.expect("(")
        name = self.string("an event name")
        self.expect(",")
        prop = "" if self.accept("*") else self.name("a property name or *")
        filters: list[m.PropertyFilter] = []
        while self.accept(","):
            filters.append(self.property_filter())
        self.expect(")")
        window = self.window()
        return m.AggregateCondition(
            name, prop, function, self.number_tail(), tuple(filters), window
        )

    def window(self) -> m.Window | None:
        if not (self.at(".") and self.tokens[self.index + 1].text in ("within", "between")):
            return None
        self.advance()
        word = self.advance().text
        self.expect("(")
        window: m.Window
        if word == "within":
            window = m.RelativeWindow(self.duration())
        else:
            start = self.time()
            self.expect(",")
            window = m.AbsoluteWindow(start, self.time())
        self.expect(")")
        return window

    def property_filter(self) -> m.PropertyFilter:
        prop = self.name("a property name")
        operator, values = self.op_tail()
        return m.PropertyFilter(prop, operator, values)

    def op_tail(self) -> tuple[m.Operator, tuple[m.Value, ...]]:
        token = self.token
        if token.kind == "op":
            self.advance()
            return _OPS[token.text], (self.value(),)
        if self.accept("between"):
            low = self.value()
            self.expect("and")
            return m.Operator.BETWEEN, (low, self.value())
        if self.accept("in"):
            self.expect("(")
            values = [self.value()]
            while self.accept(","):
                values.append(self.value())
            self.expect(")")
            return m.Operator.IN, tuple(values)
        for word in ("contains", "starts_with"):
            if self.accept(word):
                return m.Operator(word), (self.value(),)
        for word in ("exists", "not_exists"):
            if self.accept(word):
                return m.Operator(word), ()
        raise self.error(
            f"expected an operator (=, !=, <, <=, >, >=, between, in, contains, starts_with, "
            f"exists, not_exists) but found {_describe(token)}"
        )

    def number_tail(self) -> m.Comparison:
        token = self.token
        if token.kind == "op":
            self.advance()
            return m.Comparison(_OPS[token.text], self.number())
        if self.accept("between"):
            low = self.number()
            self.expect("and")
            return m.Comparison(m.Operator.BETWEEN, low, self.number())
        raise self.error(
            f"expected a comparison (>=, =, between, ...) but found {_describe(token)}"
        )

    def value(self) -> m.Value:
        token = self.token
        if token.kind == "string":
            return self.string("a value")
        if token.kind == "number":
            return self.number()
        if self.accept("true"):
            return True
        if self.accept("false"):
            return False
        if self.at("time"):
            return self.time()
        raise self.error(f"expected a value but found {_describe(token)}")

    def number(self) -> float:
        token = self.token
        if token.kind != "number":
            raise self.error(f"expected a number but found {_describe(token)}")
        self.advance()
        return float(token.text)

    def integer(self) -> int:
        token = self.token
        if token.kind != "number" or not token.text.isdigit():
            raise self.error(f"expected a whole number but found {_describe(token)}")
        self.advance()
        return int(token.text)

    def period_unit(self) -> m.PeriodUnit:
        token = self.token
        if token.kind != "name" or token.text not in _PERIOD_WORDS:
            raise self.error(f"expected day, week or month but found {_describe(token)}")
        self.advance()
        return _PERIOD_WORDS[token.text]

    def duration(self) -> timedelta:
        token = self.token
        if token.kind != "duration":
            raise self.error(f"expected a duration such as 30d but found {_describe(token)}")
        self.advance()
        amount, unit = token.text[:-1], token.text[-1]
        micros = Decimal(amount) * Decimal(_UNITS[unit] // timedelta(microseconds=1))
        return timedelta(microseconds=int(micros))

    def time(self) -> datetime:
        self.expect("time")
        self.expect("(")
        token = self.token
        raw = self.string("an ISO 8601 time")
        self.expect(")")
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise self.error(f"{raw!r} is not an ISO 8601 time", token) from None
        if moment.tzinfo is None:
            if len(raw) > 10:
                raise self.error(f"{raw!r} needs a time zone (e.g. Z or +02:00)", token)
            moment = moment.replace(tzinfo=UTC)
        return moment

    def string(self, what: str) -> str:
        token = self.token
        if token.kind != "string":
            raise self.error(
                f"expected {what} (a double-quoted string) but found {_describe(token)}"
            )
        self.advance()
        return _unquote(token.text)

    def name(self, what: str) -> str:
        token = self.token
        if token.kind == "string":
            return self.string(what)
        if token.kind == "name":
            self.advance()
            return token.text
        raise self.error(f"expected {what} but found {_describe(token)}")


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    out: list[str] = []
    index = 0
    escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            nxt = body[index + 1]
            if nxt == "u" and index + 5 < len(body):
                out.append(chr(int(body[index + 2 : index + 6], 16)))
                index += 6
                continue
            out.append(escapes.get(nxt, nxt))
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def parse(text: str) -> m.Condition:
    """The tree of `text`; raises ParseError with the position of the first problem."""
    return _Parser(text).parse()


def parse_or_invalid(text: str, *, field: str = "text") -> m.Condition:
    """Like `parse`, raising InvalidArgumentError (naming `field`) instead of ParseError."""
    try:
        return parse(text)
    except ParseError as exc:
        raise exc.to_invalid_argument(field) from None


# --- printer ---------------------------------------------------------------------------------


def quote(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _name(text: str) -> str:
    if BARE_NAME.match(text) and text not in KEYWORDS:
        return text
    return quote(text)


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _time(moment: datetime) -> str:
    return f'time("{moment.astimezone(UTC).isoformat().replace("+00:00", "Z")}")'


def _duration(delta: timedelta) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if delta % size == timedelta(0):
            return f"{delta // size}{unit}"
    micros = Decimal(delta // timedelta(microseconds=1)) / Decimal(1_000_000)
    return f"{micros.normalize():f}s"


def _value(value: m.Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, datetime):
        return _time(value)
    return _number(float(value))


def _op_tail(operator: m.Operator, values: tuple[m.Value, ...]) -> str:
    if operator in _OPS_BACK:
        return f"{_OPS_BACK[operator]} {_value(values[0])}"
    if operator is m.Operator.BETWEEN:
        return f"between {_value(values[0])} and {_value(values[1])}"
    if operator is m.Operator.IN:
        return f"in ({', '.join(_value(v) for v in values)})"
    if operator in (m.Operator.CONTAINS, m.Operator.STARTS_WITH):
        return f"{operator.value} {_value(values[0])}"
    return operator.value


def _number_tail(comparison: m.Comparison) -> str:
    if comparison.operator is m.Operator.BETWEEN:
        return f"between {_number(comparison.value)} and {_number(comparison.upper)}"
    return f"{_OPS_BACK[comparison.operator]} {_number(comparison.value)}"


def _filters(filters: tuple[m.PropertyFilter, ...]) -> str:
    return "".join(f", {_name(f.property)} {_op_tail(f.operator, f.values)}" for f in filters)


def _window(window: m.Window | None) -> str:
    if isinstance(window, m.RelativeWindow):
        return f".within({_duration(window.duration)})"
    if isinstance(window, m.AbsoluteWindow):
        return f".between({_time(window.start)}, {_time(window.end)})"
    return ""


def _plural(unit: m.PeriodUnit, count: int) -> str:
    return unit.value if count == 1 else f"{unit.value}s"


def to_text(condition: m.Condition) -> str:
    """The canonical text of a tree."""
    return _print(condition, parent=None)


def _print(node: m.Condition, parent: type | None) -> str:
    if isinstance(node, m.And | m.Or):
        if len(node.conditions) == 1:
            return _print(node.conditions[0], parent)
        word = " and " if isinstance(node, m.And) else " or "
        body = word.join(_print(child, type(node)) for child in node.conditions)
        wrap = (
            parent is m.Not or parent is type(node) or (parent is m.And and isinstance(node, m.Or))
        )
        return f"({body})" if wrap else body
    if isinstance(node, m.Not):
        return f"not {_print(node.condition, m.Not)}"
    if isinstance(node, m.TraitCondition):
        return f"trait({_name(node.name)}) {_op_tail(node.operator, node.values)}"
    if isinstance(node, m.IdentifierCondition):
        return f"{'has' if node.present else 'has_no'}({_name(node.type)})"
    if isinstance(node, m.ConsentCondition):
        return f"consent({_name(node.channel)}, {_name(node.purpose)}) = {_name(node.status)}"
    if isinstance(node, m.SegmentCondition):
        return f"in_segment({_name(node.segment_id)})"
    if isinstance(node, m.EventCondition):
        kind = f", type: {_name(node.event_type)}" if node.event_type else ""
        text = f"performed({quote(node.name)}{kind}{_filters(node.filters)}){_window(node.window)}"
        measure = node.measure
        if isinstance(measure, m.CountMeasure):
            if measure.every is not None:
                every = measure.every
                text += (
                    f".count(every {every.unit.value}, last {every.count} "
                    f"{_plural(every.unit, every.count)}) {_number_tail(measure.comparison)}"
                )
            elif measure.comparison != m.AT_LEAST_ONCE:
                text += f".count() {_number_tail(measure.comparison)}"
        else:
            bound = measure.bound
            point = (
                _time(bound.time)
                if bound.time is not None
                else f"{_duration(bound.ago or timedelta(0))} ago"
            )
            text += f".{measure.which}() {bound.relation} {point}"
        return text
    prop = _name(node.property) if node.property else "*"
    return (
        f"{node.function.value}({quote(node.name)}, {prop}{_filters(node.filters)})"
        f"{_window(node.window)} {_number_tail(node.comparison)}"
    )
