"""Settings: built-in defaults, then the YAML file, then ``CALLBRIDGE_*`` environment variables.

Validated once at start with a JSON schema; every error names the key, and where the value came
from (``config/callbridge.yaml:12`` or ``env CALLBRIDGE_AMI_PORT``), so a supervisor can fix it
without reading code. Environment names are ``CALLBRIDGE_<SECTION>_<KEY>`` in capitals, e.g.
``CALLBRIDGE_AMI_SECRET``; values are converted to the type the schema asks for.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cti.ami.client import AMIConfig

DEFAULT_PATH = Path("config/callbridge.yaml")
ENV_PREFIX = "CALLBRIDGE_"

DEFAULTS: dict[str, Any] = {
    "pbx": {"name": "asterisk", "kind": "asterisk", "agents_file": "var/agents.json"},
    "ami": {
        "host": "127.0.0.1",
        "port": 5038,
        "username": "lab",
        "secret": "lab",
        "auth": "md5",
        "events": "on",
        "connect_timeout": 5.0,
        "action_timeout": 10.0,
        "ping_interval": 20.0,
        "ping_timeout": 5.0,
        "backoff_initial": 0.5,
        "backoff_max": 30.0,
        "event_filters": ["!Event: VarSet"],
    },
    "agents": [],
    "queues": [],
    "customers": {"database": "var/customers.db", "default_region": "US", "segments": "config/segments.yaml"},
    "http": {
        "host": "127.0.0.1",
        "port": 8080,
        "api_tokens": [],
        "public_origins": [],
        "secure_cookie": False,
    },
    "log": {"level": "INFO", "format": "text"},
    "demo": {"speed": 1.0, "loop": True, "scenarios": []},
    "screenpop": {
        "dispositions": [
            {"code": "resolved", "label": "Resolved"},
            {"code": "follow_up", "label": "Needs follow-up"},
            {"code": "callback", "label": "Call back"},
            {"code": "sale", "label": "Sale"},
            {"code": "complaint", "label": "Complaint"},
            {"code": "wrong_number", "label": "Wrong number"},
        ],
        "wrapup": {"pause": False, "reason": "Wrap-up", "max_seconds": 120.0},
        "dial": {"context": "customers", "caller_id": "", "timeout": 30.0},
        "webhooks": [],
        "mask_ivr_input": False,
    },
}

_NUMBER = {"type": "number", "minimum": 0}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "pbx": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "kind": {"enum": ["asterisk"]},
                "agents_file": {"type": "string"},
            },
        },
        "ami": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "username": {"type": "string", "minLength": 1},
                "secret": {"type": "string"},
                "auth": {"enum": ["md5", "plain"]},
                "events": {"type": "string", "minLength": 1},
                "connect_timeout": {"type": "number", "exclusiveMinimum": 0},
                "action_timeout": {"type": "number", "exclusiveMinimum": 0},
                "ping_interval": _NUMBER,
                "ping_timeout": {"type": "number", "exclusiveMinimum": 0},
                "backoff_initial": _NUMBER,
                "backoff_max": {"type": "number", "exclusiveMinimum": 0},
                "event_filters": {"type": "array", "items": {"type": "string", "minLength": 1}},
            },
        },
        "agents": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "interfaces"],
                "properties": {
                    "id": {"type": "string", "minLength": 1},
                    "name": {"type": "string"},
                    "interfaces": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "minItems": 1,
                    },
                    "password_hash": {"type": "string", "pattern": "^scrypt\\$"},
                    "dial_device": {"type": "string", "minLength": 1},
                },
            },
        },
        "queues": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "wrapup": {"type": "number", "minimum": 0},
                },
            },
        },
        "customers": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "database": {"type": "string", "minLength": 1},
                "default_region": {"type": "string", "pattern": "^[A-Z]{2}$"},
                "segments": {"type": "string"},
            },
        },
        "http": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                "api_tokens": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "token"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "token": {"type": "string", "minLength": 16},
                            "role": {"enum": ["read", "write", "admin"]},
                        },
                    },
                },
                "public_origins": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^https?://[^/\\s]+$"},
                },
                "secure_cookie": {"type": "boolean"},
            },
        },
        "log": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
                "format": {"enum": ["text", "json"]},
            },
        },
        "demo": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "speed": {"type": "number", "exclusiveMinimum": 0},
                "loop": {"type": "boolean"},
                "scenarios": {"type": "array", "items": {"type": "string"}},
            },
        },
        "screenpop": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "dispositions": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["code", "label"],
                        "properties": {
                            "code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                            "label": {"type": "string", "minLength": 1},
                            "notes_required": {"type": "boolean"},
                        },
                    },
                },
                "wrapup": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "pause": {"type": "boolean"},
                        "reason": {"type": "string", "minLength": 1},
                        "max_seconds": _NUMBER,
                    },
                },
                "dial": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "context": {"type": "string", "minLength": 1},
                        "caller_id": {"type": "string"},
                        "timeout": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
                "mask_ivr_input": {"type": "boolean"},
                "webhooks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["url"],
                        "oneOf": [{"required": ["secret"]}, {"required": ["secret_env"]}],
                        "properties": {
                            "url": {"type": "string", "pattern": "^https?://"},
                            "secret": {"type": "string", "minLength": 16},
                            "secret_env": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]*$"},
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"enum": ["pop", "update", "retract", "wrapup"]},
                            },
                            "timeout": {"type": "number", "exclusiveMinimum": 0},
                            "max_attempts": {"type": "integer", "minimum": 1},
                            "backoff_initial": {"type": "number", "exclusiveMinimum": 0},
                            "backoff_max": {"type": "number", "exclusiveMinimum": 0},
                        },
                    },
                },
            },
        },
    },
}


class SettingsError(ValueError):
    """The settings are invalid; ``problems`` lists each one with its key and source."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class AgentSettings:
    id: str
    name: str
    interfaces: tuple[str, ...]
    password_hash: str = field(default="", repr=False)
    """``scrypt$...`` from ``screenpop.hash_password``; empty: the agent cannot log in to the page."""
    dial_device: str = ""
    """The channel click-to-dial rings first (AMI ``Originate``); empty: the first interface."""

    @property
    def device(self) -> str:
        return self.dial_device or self.interfaces[0]


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """What AMI does not say about a queue: its wrap-up time (queues.conf ``wrapuptime``)."""

    name: str
    wrapup: float = 0.0


@dataclass(frozen=True, slots=True)
class CustomerSettings:
    database: str = "var/customers.db"
    """SQLite file (created with its folder if missing); relative paths are from the working dir."""
    default_region: str = "US"
    """ISO country whose national number format phones without a country code are read in."""
    segments: str = "config/segments.yaml"


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    """Who uses it (``shop``, ``erp``): recorded as the source of what it writes."""
    token: str = field(repr=False)
    role: str = "write"
    """``read`` (GET only), ``write`` (also creates, updates, timeline, notes, consent) or
    ``admin`` (also merges and removing do-not-call entries)."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    api_tokens: tuple[ApiToken, ...] = ()
    public_origins: tuple[str, ...] = ()
    """Where agents reach the page when that is not ``http://host:port`` (a reverse proxy:
    ``https://cti.example.com``): the agent WebSocket and the page's POSTs accept these Origins."""
    secure_cookie: bool = False
    """Mark the agent session cookie ``Secure``: set it when agents reach the page over HTTPS."""


@dataclass(frozen=True, slots=True)
class Disposition:
    code: str
    """Stored on the timeline (``disposition`` of the call interaction)."""
    label: str
    notes_required: bool = False


@dataclass(frozen=True, slots=True)
class WrapupSettings:
    pause: bool = False
    """Pause the agent in its queues (AMI ``QueuePause``) from the call's end until the wrap-up is
    submitted or ``max_seconds`` pass."""
    reason: str = "Wrap-up"
    """The pause reason the PBX shows (``QueuePause Reason``)."""
    max_seconds: float = 120.0
    """Resume after this long even without a wrap-up; 0: wait for the agent."""


@dataclass(frozen=True, slots=True)
class DialSettings:
    context: str = "customers"
    """Dialplan context the number is dialled in once the agent's device answers."""
    caller_id: str = ""
    """Caller id presented to the customer; empty: the dialplan decides."""
    timeout: float = 30.0
    """Seconds the agent's device may ring before the click-to-dial gives up."""


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    secret: str = field(repr=False)
    """HMAC-SHA256 key; from ``secret`` or the environment variable ``secret_env`` names."""
    events: tuple[str, ...] = ("pop", "update", "retract", "wrapup")
    timeout: float = 5.0
    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 300.0


@dataclass(frozen=True, slots=True)
class ScreenpopSettings:
    dispositions: tuple[Disposition, ...] = ()
    wrapup: WrapupSettings = field(default_factory=WrapupSettings)
    dial: DialSettings = field(default_factory=DialSettings)
    webhooks: tuple[WebhookSettings, ...] = ()
    mask_ivr_input: bool = False
    """Pops show the digits a caller keyed in an IVR as ``•`` (``screenpop.tracker`` Rule 9)."""


@dataclass(frozen=True, slots=True)
class Settings:
    ami: AMIConfig
    pbx_name: str = "asterisk"
    agents_file: str = "var/agents.json"
    """Agents added or changed through ``/api/agents``, laid over ``agents`` at start; empty:
    such changes last until the service stops."""
    agents: tuple[AgentSettings, ...] = ()
    queues: tuple[QueueSettings, ...] = ()
    customers: CustomerSettings = field(default_factory=CustomerSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    log_level: str = "INFO"
    log_format: str = "text"
    demo_speed: float = 1.0
    demo_loop: bool = True
    demo_scenarios: tuple[str, ...] = ()
    screenpop: ScreenpopSettings = field(default_factory=ScreenpopSettings)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None, *, required: bool = False
) -> Settings:
    """Defaults, then ``path`` (if it exists, or must exist when ``required``), then environment."""
    environ = os.environ if environ is None else environ
    data = copy.deepcopy(DEFAULTS)
    sources: dict[str, str] = {}
    problems: list[str] = []
    file = Path(path) if path is not None else DEFAULT_PATH
    if file.exists():
        try:
            loaded, lines = _load_yaml(file)
        except yaml.YAMLError as exc:
            raise SettingsError([f"{file}: not valid YAML: {exc}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SettingsError([f"{file}: the top level must be a mapping of sections"])
        _merge(data, loaded)
        sources |= {key: f"{file}:{line}" for key, line in lines.items()}
    elif required or path is not None:
        raise SettingsError([f"{file}: no such settings file"])
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        located = _env_key(name)
        if located is None:
            # A typo in a section's key must not pass silently; other CALLBRIDGE_* variables
            # (the lab's CALLBRIDGE_LAB_DIR, the tests' knobs) are not settings.
            section = name.removeprefix(ENV_PREFIX).lower().partition("_")[0]
            if section in SCHEMA["properties"]:
                problems.append(f"env {name}: no such setting in section {section!r}")
            continue
        section, key = located
        try:
            data[section][key] = _coerce(raw, SCHEMA["properties"][section]["properties"][key])
        except ValueError as exc:
            problems.append(f"{section}.{key} (env {name}): {exc}")
        sources[f"{section}.{key}"] = f"env {name}"
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "additionalProperties":
            known = sorted(error.schema.get("properties", {}))
            for extra in sorted(set(error.instance) - set(known)):
                full = f"{key}.{extra}" if key else str(extra)
                where = _source_of(full, sources)
                problems.append(
                    f"{full}{f' ({where})' if where else ''}: unknown key; expected one of {', '.join(known)}"
                )
            continue
        where = _source_of(key, sources)
        problems.append(f"{key or '(top level)'}{f' ({where})' if where else ''}: {error.message}")
    screenpop = _screenpop(data["screenpop"], environ, problems, sources)
    if problems:
        raise SettingsError(problems)
    assert screenpop is not None
    ami = data["ami"] | {"event_filters": tuple(data["ami"]["event_filters"])}
    return Settings(
        ami=AMIConfig(**ami),
        pbx_name=data["pbx"]["name"],
        agents_file=data["pbx"]["agents_file"],
        agents=tuple(
            AgentSettings(
                a["id"],
                a.get("name", a["id"]),
                tuple(a["interfaces"]),
                a.get("password_hash", ""),
                a.get("dial_device", ""),
            )
            for a in data["agents"]
        ),
        queues=tuple(QueueSettings(q["name"], float(q.get("wrapup", 0))) for q in data["queues"]),
        customers=CustomerSettings(**data["customers"]),
        http=HttpSettings(
            host=data["http"]["host"],
            port=data["http"]["port"],
            api_tokens=tuple(
                ApiToken(t["name"], t["token"], t.get("role", "write")) for t in data["http"]["api_tokens"]
            ),
            public_origins=tuple(data["http"]["public_origins"]),
            secure_cookie=bool(data["http"]["secure_cookie"]),
        ),
        log_level=data["log"]["level"],
        log_format=data["log"]["format"],
        demo_speed=float(data["demo"]["speed"]),
        demo_loop=bool(data["demo"]["loop"]),
        demo_scenarios=tuple(data["demo"]["scenarios"]),
        screenpop=screenpop,
        sources=sources,
    )


def _screenpop(
    data: Mapping[str, Any], environ: Mapping[str, str], problems: list[str], sources: Mapping[str, str]
) -> ScreenpopSettings | None:
    """The screen-pop section; webhook secrets named by ``secret_env`` are read here, so a missing
    variable is reported with the rest at start, not at the first pop."""
    if problems:
        return None
    webhooks = []
    for index, hook in enumerate(data["webhooks"]):
        secret = hook.get("secret")
        if secret is None:
            secret = environ.get(hook["secret_env"], "")
            if len(secret) < 16:
                key = f"screenpop.webhooks.{index}.secret_env"
                where = _source_of(key, sources)
                problems.append(
                    f"{key}{f' ({where})' if where else ''}: environment variable {hook['secret_env']} "
                    "must hold the webhook secret (16 characters or more)"
                )
                continue
        webhooks.append(
            WebhookSettings(
                url=hook["url"],
                secret=secret,
                events=tuple(hook.get("events", ("pop", "update", "retract", "wrapup"))),
                timeout=float(hook.get("timeout", 5.0)),
                max_attempts=int(hook.get("max_attempts", 8)),
                backoff_initial=float(hook.get("backoff_initial", 1.0)),
                backoff_max=float(hook.get("backoff_max", 300.0)),
            )
        )
    codes = [d["code"] for d in data["dispositions"]]
    for code in sorted({c for c in codes if codes.count(c) > 1}):
        problems.append(f"screenpop.dispositions: code {code!r} is listed more than once")
    if problems:
        return None
    wrapup, dial = data["wrapup"], data["dial"]
    return ScreenpopSettings(
        dispositions=tuple(
            Disposition(d["code"], d["label"], bool(d.get("notes_required", False)))
            for d in data["dispositions"]
        ),
        wrapup=WrapupSettings(bool(wrapup["pause"]), wrapup["reason"], float(wrapup["max_seconds"])),
        dial=DialSettings(dial["context"], dial["caller_id"], float(dial["timeout"])),
        webhooks=tuple(webhooks),
        mask_ivr_input=bool(data["mask_ivr_input"]),
    )


def _merge(into: dict[str, Any], loaded: Mapping[str, Any]) -> None:
    for key, value in loaded.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _env_key(name: str) -> tuple[str, str] | None:
    rest = name.removeprefix(ENV_PREFIX).lower()
    for section, spec in SCHEMA["properties"].items():
        if rest.startswith(section + "_") and spec.get("type") == "object":
            key = rest.removeprefix(section + "_")
            if key in spec["properties"]:
                return section, key
    return None


def _coerce(raw: str, spec: Mapping[str, Any]) -> Any:
    kind = spec.get("type")
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if kind == "array" and spec.get("items", {}).get("required") == ["name", "token"]:
        # CALLBRIDGE_HTTP_API_TOKENS="shop:<token>,erp:<token>:read,ops:<token>:admin"
        tokens = []
        for item in filter(None, (part.strip() for part in raw.split(","))):
            name, sep, rest = item.partition(":")
            if not sep:
                raise ValueError("expected name:token[:role] items separated by commas")
            token, _, role = rest.partition(":")
            tokens.append({"name": name, "token": token} | ({"role": role} if role else {}))
        return tokens
    if kind == "array" and spec.get("items", {}).get("type") == "string":
        # CALLBRIDGE_AMI_EVENT_FILTERS="!Event: VarSet,!Event: Cdr"
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind == "boolean":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    return raw


def _source_of(key: str, sources: Mapping[str, str]) -> str | None:
    while key:
        if key in sources:
            return sources[key]
        key = key.rpartition(".")[0]
    return None


def _load_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """The document and, for every key path (``ami.port``, ``agents.0.id``), its line number."""
    text = path.read_text(encoding="utf-8")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}

    def walk(n: yaml.Node | None, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):
            for index, item in enumerate(n.value):
                key = f"{prefix}.{index}"
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    walk(node, "")
    return yaml.safe_load(text), lines
