"""``callbridge customers segments``: bulk value and segments from the settings' rule file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from callbridge.cli import main
from customers.sqlite_store import SQLiteStore

RULES = """\
segments:
  big_spenders:
    description: spent 500 or more
    spend: ">= 500"
  never_ordered:
    not: {orders: ">= 1"}
"""


async def fill(db: Path) -> dict[str, str]:
    now = time.time()
    async with SQLiteStore(db) as store:
        rich = await store.create_customer("Rich Buyer", identities=[("phone", "+14155550101")])
        small = await store.create_customer("Small Buyer", identities=[("phone", "+14155550102")])
        none = await store.create_customer("Window Shopper", identities=[("email", "shop@example.com")])
        for amount in (300.0, 250.0):
            await store.append_interaction(rich.id, "order", at=now - 86400, data={"amount": amount})
        await store.append_interaction(small.id, "order", at=now - 86400 * 40, data={"amount": 20.0})
        await store.append_interaction(none.id, "web", at=now - 3600, summary="viewed pricing")
    return {"rich": rich.id, "small": small.id, "none": none.id}


def test_segments_command_scores_and_fills_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "customers.db"
    ids = asyncio.run(fill(db))
    rules = tmp_path / "segments.yaml"
    rules.write_text(RULES, encoding="utf-8")
    assert main(["customers", "--database", str(db), "segments", "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "3 customers (2 buyers" in out and "big_spenders 1" in out and "never_ordered 1" in out

    async def check() -> None:
        async with SQLiteStore(db) as store:
            assert await store.segment_members("big_spenders") == [ids["rich"]]
            assert await store.segment_members("never_ordered") == [ids["none"]]
            rich, small = await store.value(ids["rich"]), await store.value(ids["small"])
            assert rich is not None and small is not None and rich.score > small.score
            assert "2 orders" in rich.explanation

    asyncio.run(check())


def test_a_broken_rule_file_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "customers.db"
    asyncio.run(fill(db))
    rules = tmp_path / "segments.yaml"
    rules.write_text("segments:\n  vip:\n    valu: '>= 80'\n", encoding="utf-8")
    assert main(["customers", "--database", str(db), "segments", "--rules", str(rules)]) == 2
    err = capsys.readouterr().err
    assert f"{rules}:3" in err and "valu" in err
