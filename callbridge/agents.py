"""Agents and their devices: declared in the settings, changed at run time through the API.

A supervisor moves an agent to another desk, adds a newcomer or removes a leaver with
``PUT`` / ``DELETE /api/agents/{id}`` (``callbridge.agents_api``). The change applies at once (the
call model routes the devices' next calls to the agent, the agent can log in to the page or no
longer) and is written to ``pbx.agents_file`` (JSON, replaced atomically), which is laid over
the settings' ``agents`` at the next start: a change survives a restart, the settings file stays
the supervisor's own. An entry of that file names an agent fully (it replaces the settings'
entry of the same id); ``removed`` lists the settings' agents the API removed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from callbridge.settings import AgentSettings
from screenpop.actions import AgentProfile

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT_VERSION = 1


class AgentsFileError(ValueError):
    """The agents file cannot be read; the message names the file and what is wrong."""


@dataclass(slots=True)
class AgentDirectory:
    """The effective agents: the settings' with the API's changes laid over them."""

    path: Path | None
    _changed: dict[str, AgentSettings] = field(default_factory=dict)
    _removed: set[str] = field(default_factory=set)
    _agents: dict[str, AgentSettings] = field(default_factory=dict)
    _from_settings: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, configured: Sequence[AgentSettings], path: str | Path | None) -> AgentDirectory:
        directory = cls(Path(path) if path else None)
        directory._from_settings = {agent.id for agent in configured}
        if directory.path is not None and directory.path.exists():
            directory._changed, directory._removed = _read(directory.path)
        agents = {agent.id: agent for agent in configured}
        agents.update(directory._changed)
        for agent_id in directory._removed:
            agents.pop(agent_id, None)
        directory._agents = agents
        return directory

    def all(self) -> list[AgentSettings]:
        return list(self._agents.values())

    def get(self, agent_id: str) -> AgentSettings | None:
        return self._agents.get(agent_id)

    def origin(self, agent_id: str) -> str:
        """``api`` when the agent's current entry came through the API, else ``settings``."""
        return "api" if agent_id in self._changed else "settings"

    def put(self, agent: AgentSettings) -> None:
        self._agents[agent.id] = agent
        self._changed[agent.id] = agent
        self._removed.discard(agent.id)
        self._save()

    def remove(self, agent_id: str) -> AgentSettings | None:
        agent = self._agents.pop(agent_id, None)
        self._changed.pop(agent_id, None)
        if agent_id in self._from_settings:
            self._removed.add(agent_id)
        self._save()
        return agent

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "version": FORMAT_VERSION,
            "agents": [_plain(agent) for agent in self._changed.values()],
            "removed": sorted(self._removed),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info(
            "agents file %s written: %d changed, %d removed",
            self.path,
            len(self._changed),
            len(self._removed),
        )


def _plain(agent: AgentSettings) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "interfaces": list(agent.interfaces),
        "dial_device": agent.dial_device,
        "password_hash": agent.password_hash,
    }


def _read(path: Path) -> tuple[dict[str, AgentSettings], set[str]]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AgentsFileError(f"{path}: not readable as JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise AgentsFileError(f"{path}: expected an object with version {FORMAT_VERSION}")
    changed: dict[str, AgentSettings] = {}
    for index, item in enumerate(document.get("agents", [])):
        try:
            interfaces = tuple(str(i) for i in item["interfaces"])
            agent = AgentSettings(
                str(item["id"]),
                str(item.get("name") or item["id"]),
                interfaces,
                str(item.get("password_hash", "")),
                str(item.get("dial_device", "")),
            )
        except (KeyError, TypeError) as exc:
            raise AgentsFileError(f"{path}: agents[{index}]: missing or malformed {exc}") from None
        if not interfaces:
            raise AgentsFileError(f"{path}: agents[{index}]: no interfaces")
        changed[agent.id] = agent
    removed = document.get("removed", [])
    if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
        raise AgentsFileError(f"{path}: removed: expected a list of agent ids")
    return changed, set(removed)


class AgentView(Mapping[str, T]):
    """A read-only, always current view of the directory: agent id -> ``project(agent)`` (the
    page's ``AgentProfile``, the name the wrap-up writes)."""

    def __init__(self, directory: AgentDirectory, project: Callable[[AgentSettings], T]) -> None:
        self._directory = directory
        self._project = project

    def __getitem__(self, agent_id: str) -> T:
        agent = self._directory.get(agent_id)
        if agent is None:
            raise KeyError(agent_id)
        return self._project(agent)

    def __iter__(self) -> Iterator[str]:
        return iter([agent.id for agent in self._directory.all()])

    def __len__(self) -> int:
        return len(self._directory.all())


def agent_profiles(directory: AgentDirectory) -> AgentView[AgentProfile]:
    return AgentView(directory, lambda agent: AgentProfile(agent.id, agent.name, agent.device))


def agent_names(directory: AgentDirectory) -> AgentView[str]:
    return AgentView(directory, lambda agent: agent.name)
