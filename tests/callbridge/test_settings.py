from __future__ import annotations

from pathlib import Path

import pytest

from callbridge.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_settings_file_is_valid_and_declares_the_lab_agents() -> None:
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ={})
    assert (settings.ami.host, settings.ami.port, settings.ami.auth) == ("127.0.0.1", 5038, "md5")
    assert [a.id for a in settings.agents][:2] == ["agent1", "agent2"]
    assert settings.agents[0].name == "Alice"
    assert "Local/agent1@agents/n" in settings.agents[0].interfaces


def test_environment_overrides_the_file_with_typed_values() -> None:
    env = {
        "CALLBRIDGE_AMI_PORT": "5039",
        "CALLBRIDGE_AMI_SECRET": "s3cret",
        "CALLBRIDGE_AMI_PING_INTERVAL": "2.5",
    }
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ=env)
    assert settings.ami.port == 5039 and settings.ami.secret == "s3cret" and settings.ami.ping_interval == 2.5
    assert settings.sources["ami.port"] == "env CALLBRIDGE_AMI_PORT"
    assert "s3cret" not in repr(settings)


def test_errors_name_the_key_and_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "callbridge.yaml"
    path.write_text("ami:\n  host: pbx.example\n  prot: 5038\n  port: 99999\nagents:\n  - {id: a1}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(
            path,
            environ={
                "CALLBRIDGE_AMI_AUTH": "kerberos",
                "CALLBRIDGE_AMI_PASSWORD": "x",
                "CALLBRIDGE_LAB_DIR": "/x",
            },
        )
    problems = info.value.problems
    assert f"ami.prot ({path}:3): unknown key; expected one of" in "\n".join(problems)
    assert f"ami.port ({path}:4): 99999 is greater than the maximum of 65535" in problems
    assert f"agents.0 ({path}:6): 'interfaces' is a required property" in problems
    assert "ami.auth (env CALLBRIDGE_AMI_AUTH): 'kerberos' is not one of ['md5', 'plain']" in problems
    assert "env CALLBRIDGE_AMI_PASSWORD: no such setting in section 'ami'" in problems
    assert not any("LAB_DIR" in p for p in problems)  # not a settings variable


def test_bad_types_from_the_environment_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"ami.port \(env CALLBRIDGE_AMI_PORT\): 'five' is not an integer"
    ):
        load_settings(ROOT / "config" / "callbridge.yaml", environ={"CALLBRIDGE_AMI_PORT": "five"})
    broken = tmp_path / "broken.yaml"
    broken.write_text("ami: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(broken, environ={})
    with pytest.raises(SettingsError, match="no such settings file"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_cli_config_check_reports_the_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from callbridge.cli import main

    path = tmp_path / "callbridge.yaml"
    path.write_text("ami:\n  port: not-a-port\n")
    assert main(["-c", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"ami.port ({path}:2): 'not-a-port' is not of type 'integer'" in err
    assert main(["-c", str(ROOT / "config" / "callbridge.yaml"), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert "settings OK" in out and '"secret": "********"' in out


def test_api_tokens_from_the_environment_are_validated_and_never_printed() -> None:
    env = {"CALLBRIDGE_HTTP_API_TOKENS": "shop:0123456789abcdef0123,erp:fedcba9876543210fedc:read"}
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ=env)
    assert [(t.name, t.token, t.role) for t in settings.http.api_tokens] == [
        ("shop", "0123456789abcdef0123", "write"),
        ("erp", "fedcba9876543210fedc", "read"),
    ]
    assert "0123456789abcdef" not in repr(settings)
    with pytest.raises(SettingsError, match=r"http.api_tokens.0.token \(env CALLBRIDGE_HTTP_API_TOKENS\)"):
        load_settings(
            ROOT / "config" / "callbridge.yaml", environ={"CALLBRIDGE_HTTP_API_TOKENS": "shop:short"}
        )
    with pytest.raises(SettingsError, match=r"http.api_tokens.0.role \(env CALLBRIDGE_HTTP_API_TOKENS\)"):
        load_settings(
            ROOT / "config" / "callbridge.yaml",
            environ={"CALLBRIDGE_HTTP_API_TOKENS": "shop:0123456789abcdef0123:owner"},
        )


def test_screenpop_section_merges_into_defaults_and_reads_webhook_secrets_from_env(tmp_path: Path) -> None:
    path = tmp_path / "callbridge.yaml"
    path.write_text(
        "agents:\n  - {id: a1, interfaces: [PJSIP/1001, Local/a1@agents]}\n"
        "  - {id: a2, interfaces: [PJSIP/1002], dial_device: PJSIP/1002-desk}\n"
        "screenpop:\n  wrapup: {pause: true}\n"
        "  webhooks:\n    - {url: 'https://crm.example/hook', secret_env: CRM_HOOK, events: [pop]}\n"
    )
    settings = load_settings(path, environ={"CRM_HOOK": "k" * 32})
    screenpop = settings.screenpop
    wrapup = screenpop.wrapup
    assert wrapup.pause and wrapup.reason == "Wrap-up" and wrapup.max_seconds == 120
    assert [d.code for d in screenpop.dispositions][:2] == ["resolved", "follow_up"]
    assert screenpop.dial.context == "customers"
    (hook,) = screenpop.webhooks
    assert (hook.url, hook.events, hook.max_attempts) == ("https://crm.example/hook", ("pop",), 8)
    assert hook.secret == "k" * 32
    assert "k" * 32 not in repr(settings)
    assert [a.device for a in settings.agents] == ["PJSIP/1001", "PJSIP/1002-desk"]
    assert screenpop.mask_ivr_input is False
    path.write_text("screenpop:\n  mask_ivr_input: true\n")
    assert load_settings(path, environ={}).screenpop.mask_ivr_input is True
    path.write_text("screenpop:\n  mask_ivr_input: 'yes'\n")
    with pytest.raises(SettingsError, match=r"screenpop\.mask_ivr_input"):
        load_settings(path, environ={})


def test_screenpop_errors_name_the_missing_secret_and_the_repeated_disposition(tmp_path: Path) -> None:
    path = tmp_path / "callbridge.yaml"
    path.write_text(
        "screenpop:\n"
        "  dispositions:\n    - {code: sale, label: Sale}\n    - {code: sale, label: Sold}\n"
        "  webhooks:\n    - {url: 'https://crm.example/hook', secret_env: CRM_HOOK}\n"
    )
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={"CRM_HOOK": "short"})
    text = "\n".join(info.value.problems)
    assert f"screenpop.webhooks.0.secret_env ({path}:6): environment variable CRM_HOOK" in text
    assert "code 'sale' is listed more than once" in text
    path.write_text("screenpop:\n  webhooks:\n    - {url: 'ftp://x', secret: short}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path, environ={})
    text = "\n".join(info.value.problems)
    assert "screenpop.webhooks.0" in text and "ftp://x" in text


def test_ami_event_filters_default_to_dropping_varset_and_come_from_env_as_a_list() -> None:
    assert load_settings(ROOT / "config" / "callbridge.yaml", environ={}).ami.event_filters == (
        "!Event: VarSet",
    )
    env = {"CALLBRIDGE_AMI_EVENT_FILTERS": "!Event: VarSet, !Event: Cdr"}
    settings = load_settings(ROOT / "config" / "callbridge.yaml", environ=env)
    assert settings.ami.event_filters == ("!Event: VarSet", "!Event: Cdr")
    assert load_settings(environ={"CALLBRIDGE_AMI_EVENT_FILTERS": ""}).ami.event_filters == ()
