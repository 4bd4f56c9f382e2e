"""Named segments: declarative rules in YAML over a customer's facts and value.

``load_rules("config/segments.yaml")`` validates the file (JSON schema, then references and
cycles) and compiles it into a ``RuleSet``; ``evaluate(rule, facts, value, now)`` says whether a
customer matches and why. Pure: the clock is passed in. ``docs/segments.md`` is the reference.

A rule is a mapping with exactly one key::

    all: [rule, ...]                 every one matches          any: [rule, ...]   at least one
    not: rule                        the rule does not match    segment: vip       another segment
    value_score: ">= 80"             numeric fields compared with < <= > >= == != and a number
    orders / spend / days_since_last_order / days_since_last_contact / days_since_created
    contacts: {call: ">= 3"}         contacts per channel (``total`` for all channels)
    attribute: {tier: [gold, platinum]}   equal to the value, or one of the list
    birthday_within_days: 7          the birthday falls today or in the next 6 days
    value_source: import             the value was imported (``rfm``: computed from orders)

Rule 1. A missing value (never ordered, never contacted, no value computed, attribute not set,
        no birthday) makes its comparison false; ``not`` turns that into true, which is how a rule
        includes the unknowns.
Rule 2. ``days_since_*`` are whole days (24 h periods) before ``now``; ``birthday_within_days``
        counts calendar days in the rule set's ``timezone`` (UTC unless configured).
Rule 3. A birthday is ``YYYY-MM-DD`` or ``--MM-DD``; 29 February is celebrated on 28 February in
        years without it.
"""

from __future__ import annotations

import abc
import calendar
import difflib
import functools
import itertools
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

from customers.model import Channel, CustomerFacts, Value
from customers.store import CustomerError
from customers.value import DAY, Population, Weights
from customers.value import number_text as _num

__all__ = [
    "Rule",
    "RuleSet",
    "Segment",
    "SegmentConfigError",
    "evaluate",
    "load_rules",
    "parse_rules",
]

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
_CMP_PATTERN = r"^\s*(<=|>=|==|!=|<|>)?\s*(-?[0-9]+(\.[0-9]+)?)\s*$"
_CMP_RE = re.compile(_CMP_PATTERN)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
TOTAL = "total"


class SegmentConfigError(CustomerError, ValueError):
    """The segment rules are invalid; ``problems`` lists each one with file, line and rule path."""

    code = "invalid-segments"
    status = 422

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid segment rules:\n  " + "\n  ".join(problems))
        self.problems = problems


# --- the rules ------------------------------------------------------------------------------------


class Rule(abc.ABC):
    """A compiled rule. ``test`` is the bulk path; ``explain`` also says why."""

    __slots__ = ()

    @abc.abstractmethod
    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool: ...

    @abc.abstractmethod
    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]: ...


def evaluate(rule: Rule, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
    """Whether the customer matches ``rule`` at ``now``, and why, in words."""
    return rule.explain(facts, value, now)


Getter = Callable[[CustomerFacts, "Value | None", float], "float | None"]


def _whole_days(now: float, at: float | None) -> float | None:
    if at is None:
        return None
    days = (now - at) // DAY
    return days if days > 0.0 else 0.0  # a time stamped in the future (a clock ahead) is today


# name -> (getter, what a missing value means)
_NUMERIC: dict[str, tuple[Getter, str]] = {
    "value_score": (lambda f, v, now: None if v is None else v.score, "no value computed"),
    "orders": (lambda f, v, now: float(f.orders), ""),
    "spend": (lambda f, v, now: f.spend, ""),
    "days_since_last_order": (lambda f, v, now: _whole_days(now, f.last_order_at), "never ordered"),
    "days_since_last_contact": (lambda f, v, now: _whole_days(now, f.last_contact_at), "never contacted"),
    "days_since_created": (lambda f, v, now: _whole_days(now, f.created_at), ""),
}


@dataclass(frozen=True, slots=True)
class Compare(Rule):
    """``<field> <op> <number>``: Rule 1 for missing values."""

    label: str
    get: Getter = field(repr=False)
    op: str
    operand: float
    missing: str = "unknown"
    holds: Callable[[float, float], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "holds", _OPS[self.op])

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        actual = self.get(facts, value, now)
        return actual is not None and self.holds(actual, self.operand)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        actual = self.get(facts, value, now)
        wanted = f"{self.op} {_num(self.operand)}"
        if actual is None:
            return False, f"{self.label} unknown ({self.missing}), not {wanted}"
        if self.holds(actual, self.operand):
            return True, f"{self.label} {_num(actual)} {wanted}"
        return False, f"{self.label} {_num(actual)}, not {wanted}"


def _contacts(channel: str) -> Getter:
    if channel == TOTAL:
        return lambda f, v, now: float(sum(f.contacts_by_channel.values()))
    return lambda f, v, now: float(f.contacts_by_channel.get(channel, 0))


@dataclass(frozen=True, slots=True)
class AttributeIn(Rule):
    """The attribute equals one of ``allowed`` (booleans equal only booleans: ``true`` is not 1)."""

    key: str
    allowed: tuple[Any, ...]

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        if self.key not in facts.attributes:
            return False
        actual = facts.attributes[self.key]
        return any(_same(actual, a) for a in self.allowed)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        if self.key not in facts.attributes:
            return False, f"attribute {self.key} not set"
        actual = facts.attributes[self.key]
        if any(_same(actual, a) for a in self.allowed):
            return True, f"attribute {self.key} = {actual!r}"
        if len(self.allowed) == 1:
            return False, f"attribute {self.key} = {actual!r}, not {self.allowed[0]!r}"
        return False, f"attribute {self.key} = {actual!r}, not one of {', '.join(map(repr, self.allowed))}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


@dataclass(frozen=True, slots=True)
class BirthdayWithin(Rule):
    """The next birthday is fewer than ``days`` calendar days away (0 = today): ``7`` is today
    and the six days after, so a weekly run reaches every birthday exactly once."""

    days: int
    tz: ZoneInfo

    def _until(self, facts: CustomerFacts, now: float) -> int | None:
        parsed = _birthday(facts.birthday)
        if parsed is None:
            return None
        return _days_until(_today(now, self.tz), *parsed)

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        until = self._until(facts, now)
        return until is not None and until < self.days

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        if not facts.birthday:
            return False, "no birthday known"
        parsed = _birthday(facts.birthday)
        if parsed is None:
            return False, f"birthday {facts.birthday!r} is not a date"
        until = _days_until(_today(now, self.tz), *parsed)
        when = "today" if until == 0 else f"in {until} day{'' if until == 1 else 's'}"
        day = f"{parsed[0]:02d}-{parsed[1]:02d}"
        if until < self.days:
            return True, f"birthday {day} {when}, within {self.days} days"
        return False, f"birthday {day} {when}, not within {self.days} days"


def _birthday(text: str) -> tuple[int, int] | None:
    """(month, day) of ``YYYY-MM-DD`` or ``--MM-DD``; None when it is not a date."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-" and text[:4].isdigit():
        year, mm, dd = int(text[:4]), text[5:7], text[8:10]
    elif len(text) == 7 and text.startswith("--") and text[4] == "-":
        year, mm, dd = 2000, text[2:4], text[5:7]  # a leap year: --02-29 is a birthday
    else:
        return None
    if not (mm.isdigit() and dd.isdigit()):
        return None
    try:
        date(year, int(mm), int(dd))
    except ValueError:
        return None
    return int(mm), int(dd)


def _days_until(today: date, month: int, day: int) -> int:
    this_year = _occurrence(today.year, month, day)
    if this_year >= today:
        return (this_year - today).days
    return (_occurrence(today.year + 1, month, day) - today).days


def _occurrence(year: int, month: int, day: int) -> date:
    if month == 2 and day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


@functools.lru_cache(maxsize=16)
def _today(now: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(now, tz).date()


@dataclass(frozen=True, slots=True)
class ValueSource(Rule):
    """``rfm`` or ``import`` (the value's source is ``import`` or ``import:<system>``)."""

    source: str

    def _is(self, value: Value | None) -> bool:
        return value is not None and value.source.partition(":")[0] == self.source

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        return self._is(value)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        if value is None:
            return False, "no value computed"
        if self._is(value):
            return True, f"value source {value.source}"
        return False, f"value source {value.source}, not {self.source}"


@dataclass(frozen=True, slots=True)
class All(Rule):
    rules: tuple[Rule, ...]

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        # A loop, not all(<generator>): this is the bulk path, and the generator costs a third.
        for rule in self.rules:  # noqa: SIM110
            if not rule.test(facts, value, now):
                return False
        return True

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        texts = []
        for rule in self.rules:
            ok, text = rule.explain(facts, value, now)
            if not ok:
                return False, text  # the first condition that fails is the reason
            texts.append(text)
        return True, texts[0] if len(texts) == 1 else f"all of ({'; '.join(texts)})"


@dataclass(frozen=True, slots=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        for rule in self.rules:  # noqa: SIM110 (as in All.test)
            if rule.test(facts, value, now):
                return True
        return False

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        texts = []
        for rule in self.rules:
            ok, text = rule.explain(facts, value, now)
            if ok:
                return True, text  # the first condition that holds is the reason
            texts.append(text)
        return False, texts[0] if len(texts) == 1 else f"none of ({'; '.join(texts)})"


@dataclass(frozen=True, slots=True)
class Not(Rule):
    rule: Rule

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        return not self.rule.test(facts, value, now)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        ok, text = self.rule.explain(facts, value, now)
        return not ok, f"not ({text})"


@dataclass(frozen=True, slots=True)
class InSegment(Rule):
    """``segment: vip``: the other segment's rule, evaluated for the same customer."""

    name: str
    rule: Rule

    def test(self, facts: CustomerFacts, value: Value | None, now: float) -> bool:
        return self.rule.test(facts, value, now)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> tuple[bool, str]:
        ok, text = self.rule.explain(facts, value, now)
        return ok, f"{'in' if ok else 'not in'} {self.name} ({text})"


# --- the rule set -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    rule: Rule
    description: str = ""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The compiled ``config/segments.yaml``: segments in file order, and the value settings."""

    segments: tuple[Segment, ...]
    timezone: str = "UTC"
    weights: Weights = field(default_factory=Weights)
    thresholds: Population | None = None
    """Fixed RFM cut points from ``value.thresholds``; None means quintiles of the population."""
    source: str = ""

    def segment(self, name: str) -> Segment:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    def explain(self, facts: CustomerFacts, value: Value | None, now: float) -> dict[str, tuple[bool, str]]:
        """Every segment's verdict and reason for one customer (the pop's "why VIP")."""
        return {s.name: s.rule.explain(facts, value, now) for s in self.segments}


# --- loading and validation ---------------------------------------------------------------------

_SCALAR = ["string", "number", "boolean"]
_COMPARISON: dict[str, Any] = {"type": ["string", "number"], "pattern": _CMP_PATTERN}
_CHANNELS = [c.value for c in Channel] + [TOTAL]
_RULE_PROPERTIES: dict[str, Any] = {
    "all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
    "any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
    "not": {"$ref": "#/$defs/rule"},
    **{name: _COMPARISON for name in _NUMERIC},
    "contacts": {
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"enum": _CHANNELS},
        "additionalProperties": _COMPARISON,
    },
    "attribute": {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"type": [*_SCALAR, "array"], "minItems": 1, "items": {"type": _SCALAR}},
    },
    "birthday_within_days": {"type": "integer", "minimum": 1, "maximum": 366},
    "value_source": {"enum": ["rfm", "import"]},
    "segment": {"type": "string", "pattern": NAME_PATTERN},
}
_CUTS = {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number", "minimum": 0}}
_WEIGHT = {"type": "number", "minimum": 0}
SCHEMA: dict[str, Any] = {
    "$defs": {
        "rule": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
            "properties": _RULE_PROPERTIES,
        }
    },
    "type": "object",
    "additionalProperties": False,
    "required": ["segments"],
    "properties": {
        "timezone": {"type": "string", "minLength": 1},
        "value": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "weights": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"recency": _WEIGHT, "frequency": _WEIGHT, "monetary": _WEIGHT},
                },
                "thresholds": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["recency_days", "frequency", "monetary"],
                    "properties": {"recency_days": _CUTS, "frequency": _CUTS, "monetary": _CUTS},
                },
            },
        },
        "segments": {
            "type": "object",
            "propertyNames": {"pattern": NAME_PATTERN},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"description": {"type": "string"}, **_RULE_PROPERTIES},
            },
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

Path_ = tuple[str | int, ...]


def load_rules(path: str | Path) -> RuleSet:
    """Read, validate and compile a segments file; ``SegmentConfigError`` names every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise SegmentConfigError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        hint = ""
        if "chomping" in str(exc) or "block scalar" in str(exc):
            hint = ' (quote comparisons: orders: ">= 3"; a bare > starts a YAML block)'
        problem = getattr(exc, "problem", None) or str(exc)
        raise SegmentConfigError([f"{where}: not valid YAML: {problem}{hint}"]) from None
    return parse_rules(data, source=str(file), lines=_lines(node))


def parse_rules(data: Any, *, source: str = "", lines: Mapping[Path_, int] | None = None) -> RuleSet:
    """Validate and compile already-loaded data (``lines`` maps rule paths to file lines)."""
    problems = _Problems(source, lines or {})
    if data is None:
        problems.add((), "empty; expected a 'segments:' mapping")
        problems.raise_if_any()
    for error in sorted(_VALIDATOR.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path]):
        _translate(error, problems)
    # Checks the schema cannot express, made even when it failed so that one run lists them all.
    tz = ZoneInfo("UTC")
    timezone = data.get("timezone", "UTC") if isinstance(data, dict) else "UTC"
    if isinstance(timezone, str) and timezone:
        try:
            tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.add(("timezone",), f"unknown time zone {timezone!r} (an IANA name like 'Europe/Berlin')")
    segments_data = data.get("segments") if isinstance(data, dict) else None
    if isinstance(segments_data, dict):
        for name, spec in segments_data.items():
            if isinstance(spec, dict):
                _check_one_condition(spec, ("segments", name), problems)
    value_data = data.get("value") if isinstance(data, dict) else None
    weights_data = value_data.get("weights") if isinstance(value_data, dict) else None
    if (
        isinstance(weights_data, dict)
        and set(weights_data) == {"recency", "frequency", "monetary"}
        and all(w == 0 and not isinstance(w, bool) for w in weights_data.values())
    ):
        problems.add(("value", "weights"), "the weights must not all be 0")
    problems.raise_if_any()

    value_conf = data.get("value", {})
    weights = Weights(**{k: float(v) for k, v in value_conf.get("weights", {}).items()})
    thresholds = None
    if "thresholds" in value_conf:
        conf = value_conf["thresholds"]
        for name in ("recency_days", "frequency", "monetary"):
            cuts = conf[name]
            if any(a > b for a, b in itertools.pairwise(cuts)):
                problems.add(("value", "thresholds", name), f"cut points must ascend, got {cuts}")
        if not problems:
            thresholds = Population.thresholds(
                recency_days=conf["recency_days"], frequency=conf["frequency"], monetary=conf["monetary"]
            )

    compiler = _Compiler(data["segments"], tz, problems)
    segments = tuple(
        Segment(name, rule, data["segments"][name].get("description", ""))
        for name in data["segments"]
        if (rule := compiler.segment(name)) is not None
    )
    problems.raise_if_any()
    return RuleSet(segments, timezone=timezone, weights=weights, thresholds=thresholds, source=source)


def _check_one_condition(spec: Mapping[str, Any], path: Path_, problems: _Problems) -> None:
    conditions = [k for k in spec if k in _RULE_PROPERTIES]
    if len(conditions) > 1:
        found = ", ".join(map(repr, conditions))
        problems.add(path, f"one condition per segment, found {found}; combine them under 'all:' or 'any:'")
    elif not conditions and all(k == "description" for k in spec):  # unknown keys are reported already
        problems.add(path, f"no condition; expected one of {', '.join(_RULE_PROPERTIES)}")


class _Problems:
    def __init__(self, source: str, lines: Mapping[Path_, int]) -> None:
        self.source = source
        self.lines = lines
        self.items: list[tuple[int, str]] = []

    def add(self, path: Path_, message: str, *, at: Path_ | None = None) -> None:
        line = self._line(at if at is not None else path)
        prefix = self.source
        if prefix and line:
            prefix += f":{line}"
        text = f"{_format_path(path)}: {message}"
        self.items.append((line, f"{prefix}: {text}" if prefix else text))

    def _line(self, path: Path_) -> int:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return 0
            path = path[:-1]

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise SegmentConfigError([text for _, text in sorted(self.items, key=lambda item: item[0])])


def _format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true/false",
    "null": "nothing",
}


def _type_of(instance: Any) -> str:
    if instance is None:
        return "nothing"
    if isinstance(instance, bool):
        return "true/false"
    if isinstance(instance, dict):
        return "a mapping"
    if isinstance(instance, list):
        return "a list"
    if isinstance(instance, int | float):
        return "a number"
    return "text"


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if not close and len(word) >= 3:
        close = [k for k in known if k.startswith(word)][:1]
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; expected one of {', '.join(known)}"


def _translate(error: jsonschema.ValidationError, problems: _Problems) -> None:
    """One jsonschema error as the messages a supervisor can act on."""
    path: Path_ = tuple(error.absolute_path)
    kind = error.validator
    instance = error.instance
    in_names = "propertyNames" in error.relative_schema_path
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(error.schema.get("properties", {}))
        for extra in [k for k in instance if k not in known]:
            problems.add(path, f"unknown field {extra!r}{_suggest(str(extra), known)}", at=(*path, extra))
    elif in_names and kind == "pattern":
        problems.add(
            path,
            f"segment name {instance!r}: lower-case letters, digits, '_' and '-', starting with a letter",
            at=(*path, instance),
        )
    elif in_names and kind == "enum":
        problems.add(
            path, f"unknown channel {instance!r}{_suggest(str(instance), _CHANNELS)}", at=(*path, instance)
        )
    elif kind == "maxProperties":
        keys = ", ".join(map(repr, instance))
        problems.add(path, f"one condition per rule, found {keys}; combine them under 'all:' or 'any:'")
    elif kind == "minProperties" and path and path[-1] == "contacts":
        problems.add(path, f"empty; expected channels ({', '.join(_CHANNELS)}) and comparisons")
    elif kind == "minProperties" and path and path[-1] == "attribute":
        problems.add(path, "empty; expected attribute names and their values")
    elif kind == "minProperties":
        problems.add(path, f"empty; expected one rule: {', '.join(_RULE_PROPERTIES)}")
    elif kind == "pattern" and error.schema.get("pattern") == _CMP_PATTERN:
        problems.add(
            path,
            f"expected a comparison such as '>= 80' (<, <=, >, >=, ==, != then a number), got {instance!r}",
        )
    elif kind == "pattern":
        problems.add(path, f"{instance!r} is not a segment name")
    elif kind == "type":
        wanted = error.validator_value
        names = [_TYPE_NAMES[t] for t in ([wanted] if isinstance(wanted, str) else wanted)]
        wanted_text = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        problems.add(path, f"expected {wanted_text}, got {_type_of(instance)}")
    elif kind == "minItems" and path and path[-1] in ("all", "any"):
        problems.add(path, "needs at least one rule")
    elif kind == "minItems" and len(path) > 1 and path[-2] == "attribute":
        problems.add(path, "needs at least one value")
    elif kind in ("minItems", "maxItems") and error.schema is _CUTS:
        problems.add(path, f"expected 4 cut points, got {len(instance)}")
    elif kind == "required":
        missing = [r for r in error.validator_value if r not in instance]
        problems.add(path, f"missing {', '.join(map(repr, missing))}")
    elif kind == "enum":
        problems.add(path, f"{instance!r} is not one of {', '.join(map(str, error.validator_value))}")
    else:
        problems.add(path, error.message)


class _Compiler:
    """Builds ``Rule`` trees from validated data; resolves ``segment:`` references (and cycles)."""

    def __init__(self, segments: Mapping[str, Mapping[str, Any]], tz: ZoneInfo, problems: _Problems) -> None:
        self.data = segments
        self.tz = tz
        self.problems = problems
        self.done: dict[str, Rule | None] = {}
        self.stack: list[str] = []

    def segment(self, name: str) -> Rule | None:
        if name in self.done:
            return self.done[name]
        spec = self.data[name]
        path: Path_ = ("segments", name)
        (key,) = (k for k in spec if k != "description")  # checked by _check_one_condition
        self.stack.append(name)
        rule = self._rule(key, spec[key], path)
        self.stack.pop()
        self.done[name] = rule
        return rule

    def _rule(self, key: str, arg: Any, path: Path_) -> Rule | None:
        here = (*path, key)
        if key in ("all", "any"):
            children = [self._item(item, (*here, i)) for i, item in enumerate(arg)]
            if any(c is None for c in children):
                return None
            rules = tuple(c for c in children if c is not None)
            if len(rules) == 1:
                return rules[0]
            return All(rules) if key == "all" else AnyOf(rules)
        if key == "not":
            inner = self._item(arg, here)
            return None if inner is None else Not(inner)
        if key in _NUMERIC:
            get, missing = _NUMERIC[key]
            op, operand = _comparison(arg)
            return Compare(key, get, op, operand, missing or "unknown")
        if key == "contacts":
            parts = []
            for channel, cmp in arg.items():
                op, operand = _comparison(cmp)
                parts.append(Compare(f"contacts.{channel}", _contacts(channel), op, operand))
            return parts[0] if len(parts) == 1 else All(tuple(parts))
        if key == "attribute":
            attrs: list[Rule] = [
                AttributeIn(str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in arg.items()
            ]
            return attrs[0] if len(attrs) == 1 else All(tuple(attrs))
        if key == "birthday_within_days":
            return BirthdayWithin(int(arg), self.tz)
        if key == "value_source":
            return ValueSource(str(arg))
        if key == "segment":
            return self._reference(str(arg), here)
        raise AssertionError(f"unhandled rule {key!r}")  # the schema lets no other key through

    def _item(self, item: Mapping[str, Any], path: Path_) -> Rule | None:
        ((key, arg),) = item.items()
        return self._rule(key, arg, path)

    def _reference(self, name: str, path: Path_) -> Rule | None:
        if name not in self.data:
            self.problems.add(path, f"unknown segment {name!r}{_suggest(name, list(self.data))}")
            return None
        if name in self.stack:
            cycle = " → ".join([*self.stack[self.stack.index(name) :], name])
            self.problems.add(path, f"segments refer to each other in a cycle: {cycle}")
            return None
        rule = self.segment(name)
        return None if rule is None else InSegment(name, rule)


def _comparison(arg: str | float) -> tuple[str, float]:
    if isinstance(arg, int | float):
        return "==", float(arg)
    match = _CMP_RE.match(arg)
    if match is None:  # the schema's pattern already refused it
        raise AssertionError(f"not a comparison: {arg!r}")
    return match.group(1) or "==", float(match.group(2))


def _lines(node: yaml.Node | None) -> dict[Path_, int]:
    """The 1-based line of every key and list item, by rule path (``("segments", "vip", "all", 1)``)."""
    lines: dict[Path_, int] = {}

    def walk(n: yaml.Node | None, prefix: Path_) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*prefix, key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for index, item in enumerate(n.value):
                key = (*prefix, index)
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    walk(node, ())
    return lines
