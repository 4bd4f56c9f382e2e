"""``callbridge serve`` as a real process: settings from the file and the environment, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from callbridge.fakepbx import FakePBX

ROOT = Path(__file__).resolve().parents[2]


async def read_until(stream: asyncio.StreamReader, needle: str, seen: list[str], timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {needle!r}; got:\n{''.join(seen)}")
            seen.append(line)
            if needle in line:
                return


@pytest.mark.parametrize(("loop", "runs_on"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_serve_follows_the_pbx_logs_one_line_per_change_and_stops_on_sigterm(
    tmp_path: Path, loop: str, runs_on: str
) -> None:
    token = "t0ken-of-the-shop-0123456789"
    async with FakePBX(["queue_answered"], speed=10.0, username="cb", secret="from-env-only") as pbx:
        env = os.environ | {
            "PYTHONPATH": str(ROOT),
            "CALLBRIDGE_AMI_PORT": str(pbx.port),
            "CALLBRIDGE_AMI_USERNAME": "cb",
            "CALLBRIDGE_AMI_SECRET": "from-env-only",
            "CALLBRIDGE_LOG_FORMAT": "json",
            "CALLBRIDGE_HTTP_PORT": "0",
            "CALLBRIDGE_HTTP_API_TOKENS": f"shop:{token}",
            "CALLBRIDGE_CUSTOMERS_DATABASE": str(tmp_path / "data" / "customers.db"),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "callbridge",
            "-c",
            str(ROOT / "config/callbridge.yaml"),
            "--loop",
            loop,
            "serve",
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            await read_until(proc.stderr, "HTTP on http://127.0.0.1:", seen)
            port = int(seen[-1].split("http://127.0.0.1:")[1].split(" ")[0])
            await read_until(proc.stderr, '"msg": "PBXResynced', seen)
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                async with http.get("/healthz") as response:
                    health = await response.json()
                    assert response.status == 200 and health["pbx"]["connected"] is True
                auth = {"Authorization": f"Bearer {token}"}
                body = {
                    "display_name": "Jane Doe",
                    "identities": [{"kind": "phone", "value": "(415) 555-0123"}],
                }
                async with http.post("/api/customers", json=body, headers=auth) as response:
                    assert response.status == 201, await response.text()
                async with http.get(
                    "/api/customers", params={"phone": "+14155550123"}, headers=auth
                ) as response:
                    found = await response.json()
                    assert response.status == 200, found
                async with http.get("/api/customers", params={"phone": "+14155550123"}) as response:
                    assert response.status == 401
            await read_until(proc.stderr, "[ended]", seen)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await proc.wait()
        rest = (await proc.stderr.read()).decode()
    log = "".join(seen) + rest
    assert code == 0, log
    ended = next(line for line in seen if "[ended]" in line)
    assert '"call_id": "1795581569.0"' in ended and '"agent_id": "agent1"' in ended
    assert "cause=16 (Normal Clearing)" in ended
    assert '"msg": "stopping"' in rest
    serving = next(line for line in seen if "serving; AMI" in line)
    assert json.loads(serving)["msg"].endswith(f"; event loop {runs_on}"), serving
    assert "from-env-only" not in log and token not in log
    assert (tmp_path / "data" / "customers.db").exists()
    assert json.dumps(found).count("Jane Doe") >= 1


async def test_serve_refuses_bad_settings_naming_the_key() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbridge",
        "serve",
        env=os.environ | {"PYTHONPATH": str(ROOT), "CALLBRIDGE_AMI_PORT": "0"},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert "ami.port (env CALLBRIDGE_AMI_PORT): 0 is less than the minimum of 1" in err.decode()
