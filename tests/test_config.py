"""certd/config.py: typed config, every error naming its key path; and the CLI around it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from certd import __version__, cli, config
from certd.config import (
    Config,
    ConfigError,
    parse,
    parse_duration,
    render,
    split_listen,
)
from tests.certd_lab import run_certd

REPO = Path(__file__).resolve().parent.parent


def base() -> dict:
    """A small valid config to break one key at a time."""
    return {
        "state_dir": "/var/lib/certd-test",
        "frontends": {
            "web": {
                "nodes": [
                    {"name": "fe1", "address": "10.0.0.1"},
                    {"name": "fe2", "address": "10.0.0.2"},
                ],
                "deployer": {"type": "file", "path": "/srv/{node}/certs/{certificate}"},
                "reload": "nginx -s reload",
            }
        },
        "certificates": [
            {"name": "portal", "domains": ["portal.example.org", "www.portal.example.org"],
             "frontends": ["web"]},
        ],
    }


def problems(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.problems, "a ConfigError must list at least one problem"
    return info.value.problems


def one_problem(data) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


# --- good configs ---------------------------------------------------------------------

def test_base_config_parses():
    cfg = parse(base())
    assert cfg.frontends["web"].nodes[1].name == "fe2"
    assert cfg.certificates[0].domains == ["portal.example.org", "www.portal.example.org"]
    assert cfg.certificates[0].frontends == ["web"]


def test_empty_and_none_mean_defaults():
    cfg = parse(None)
    assert cfg == parse({})
    assert cfg.state_dir == Path("/var/lib/certd")
    assert cfg.acme.key_type == "ec-p256"
    assert cfg.challenge.listen == "127.0.0.1:8402"
    assert cfg.certificates == [] and cfg.frontends == {}


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert config.load(path) == Config()
    path.write_text("# only a comment\n")
    assert config.load(path) == Config()


def test_domains_are_normalised_and_deduplicated():
    data = base()
    data["certificates"][0]["domains"] = ["Portal.Example.ORG.", "portal.example.org",
                                          "bücher.example"]
    cfg = parse(data)
    assert cfg.certificates[0].domains == ["portal.example.org", "xn--bcher-kva.example"]


@pytest.mark.parametrize("text, expected", [
    ("30d", timedelta(days=30)),
    ("6h", timedelta(hours=6)),
    ("90m", timedelta(minutes=90)),
    ("45s", timedelta(seconds=45)),
    (" 2 h ", timedelta(hours=2)),
    ("0s", timedelta(0)),
    (120, timedelta(seconds=120)),
    (1.5, timedelta(seconds=1.5)),
])
def test_durations(text, expected):
    assert parse_duration(text) == expected


def test_durations_in_config():
    cfg = parse({"acme": {"timeout": "45s", "order_timeout": "90m"},
                 "challenge": {"ttl": "6h"}})
    assert cfg.acme.timeout == timedelta(seconds=45)
    assert cfg.acme.order_timeout == timedelta(minutes=90)
    assert cfg.challenge.ttl == timedelta(hours=6)


def test_database_path_from_state_dir():
    cfg = parse({"state_dir": "/srv/certd-state"})
    assert cfg.database_path == Path("/srv/certd-state/certd.db")


def test_database_path_from_storage_url():
    cfg = parse({"state_dir": "/srv/certd-state", "storage": "sqlite:////abs/path.db"})
    assert cfg.database_path == Path("/abs/path.db")
    assert cfg.database_path.is_absolute()


def test_relative_storage_url():
    cfg = parse({"storage": "sqlite:///rel/certd.db"})
    assert cfg.database_path == Path("rel/certd.db")


def test_listen_with_ipv6_host():
    cfg = parse({"challenge": {"listen": "[::1]:8402"}})
    assert split_listen(cfg.challenge.listen) == ("::1", 8402)


def test_render_substitutes_placeholders():
    assert render("/srv/{node}/{certificate}@{address}", node="fe1", address="10.0.0.1",
                  certificate="portal") == "/srv/fe1/portal@10.0.0.1"


def test_example_config_parses():
    example = REPO / "config.example.yaml"
    cfg = config.load(example)
    assert cfg.acme.directory.startswith("https://")
    assert "local" in cfg.frontends
    assert "{certificate}" in cfg.frontends["local"].deployer.path


def test_config_is_frozen():
    cfg = parse(base())
    with pytest.raises(Exception):
        cfg.state_dir = Path("/elsewhere")  # type: ignore[misc]


# --- every error names its key path ---------------------------------------------------

def test_bad_node_address_names_its_index():
    data = base()
    data["frontends"]["web"]["nodes"][1]["address"] = "10.0.0.2; rm -rf /"
    assert one_problem(data).startswith("frontends.web.nodes[1].address: ")


def test_bad_domain_names_its_index():
    data = base()
    data["certificates"][0]["domains"][1] = "*.portal.example.org"
    problem = one_problem(data)
    assert problem.startswith("certificates[0].domains[1]: ")
    assert "wildcard" in problem


@pytest.mark.parametrize("where, key, path", [
    ((), "colour", "colour"),
    (("acme",), "directroy", "acme.directroy"),
    (("frontends", "web"), "nodez", "frontends.web.nodez"),
    (("frontends", "web", "deployer"), "mode", "frontends.web.deployer.mode"),
])
def test_unknown_keys(where, key, path):
    data = base()
    data.setdefault("acme", {})
    node = data
    for part in where:
        node = node[part]
    node[key] = "x"
    assert one_problem(data) == f"{path}: unknown key"


def test_unknown_key_in_a_list_item():
    data = base()
    data["certificates"][0]["domain"] = ["x.example"]
    assert one_problem(data) == "certificates[0].domain: unknown key"


@pytest.mark.parametrize("remove, path", [
    (("frontends", "web", "deployer"), "frontends.web.deployer"),
    (("frontends", "web", "nodes"), "frontends.web.nodes"),
    (("certificates", 0, "domains"), "certificates[0].domains"),
    (("certificates", 0, "name"), "certificates[0].name"),
])
def test_missing_keys(remove, path):
    data = base()
    node = data
    for part in remove[:-1]:
        node = node[part]
    del node[remove[-1]]
    assert one_problem(data) == f"{path}: required key is missing"


def test_missing_node_name():
    data = base()
    del data["frontends"]["web"]["nodes"][0]["name"]
    assert one_problem(data) == "frontends.web.nodes[0].name: required key is missing"


@pytest.mark.parametrize("value", ["30x", "-5s", True, False, -5, "5", "1d 6h", "",
                                   "5 days", ".inf", float("inf"), float("nan"),
                                   "99999999999999d", 1e300, None, [1], {"d": 1}])
def test_bad_durations_name_their_key(value):
    problem = one_problem({"acme": {"timeout": value}})
    assert problem.startswith("acme.timeout: "), problem


@pytest.mark.parametrize("value", ["30x", "-5s", "true", "1e999"])
def test_bad_durations_raise_value_error(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_yaml_true_is_not_a_duration():
    # YAML reads an unquoted `true` as a boolean, never as 1 second
    data = yaml.safe_load("challenge: {ttl: true}")
    assert one_problem(data).startswith("challenge.ttl: ")


@pytest.mark.parametrize("listen", ["host:99999", "host:0", "host", ":8402", "host:http",
                                    "host:-1", "127.0.0.1:"])
def test_bad_listen(listen):
    problem = one_problem({"challenge": {"listen": listen}})
    assert problem.startswith("challenge.listen: "), problem
    assert "HOST:PORT" in problem


def test_bad_api_listen():
    assert one_problem({"api": {"listen": "host:99999"}}).startswith("api.listen: ")


def test_unknown_template_placeholder():
    data = base()
    data["frontends"]["web"]["deployer"]["path"] = "/srv/{nod}/{certificate}"
    problem = one_problem(data)
    assert problem.startswith("frontends.web.deployer.path: ")
    assert "{nod}" in problem


@pytest.mark.parametrize("key", ["check", "reload"])
def test_unknown_placeholder_in_commands(key):
    data = base()
    data["frontends"]["web"][key] = "systemctl reload {service}"
    problem = one_problem(data)
    assert problem.startswith(f"frontends.web.{key}: ")
    assert "{service}" in problem


@pytest.mark.parametrize("template", ["/srv/{node", "/srv/{}", "/srv/{0}",
                                      "/srv/{node.__class__}"])
def test_malformed_templates(template):
    data = base()
    data["frontends"]["web"]["deployer"]["path"] = template
    assert one_problem(data).startswith("frontends.web.deployer.path: ")


def test_unknown_frontend_reference():
    data = base()
    data["certificates"][0]["frontends"] = ["web", "edge"]
    problem = one_problem(data)
    assert problem.startswith("certificates[0].frontends[1]: ")
    assert "'edge'" in problem and "web" in problem


def test_duplicate_node_names():
    data = base()
    data["frontends"]["web"]["nodes"][1]["name"] = "fe1"
    problem = one_problem(data)
    assert problem.startswith("frontends.web.nodes")
    assert "'fe1'" in problem and "twice" in problem


def test_duplicate_certificate_names():
    data = base()
    data["certificates"].append({"name": "portal", "domains": ["other.example.org"]})
    problem = one_problem(data)
    assert problem.startswith("certificates[1].name: ")
    assert "twice" in problem


def test_cross_reference_problems_are_all_listed():
    data = base()
    data["certificates"].append({"name": "portal", "domains": ["b.example.org"],
                                 "frontends": ["nope"]})
    found = problems(data)
    assert any(p.startswith("certificates[1].name: ") for p in found)
    assert any(p.startswith("certificates[1].frontends[0]: ") for p in found)


@pytest.mark.parametrize("where", ["acme", "certificate"])
def test_bad_key_type(where):
    data = base()
    if where == "acme":
        data["acme"] = {"key_type": "dsa-1024"}
        path = "acme.key_type: "
    else:
        data["certificates"][0]["key_type"] = "rsa-1024"
        path = "certificates[0].key_type: "
    problem = one_problem(data)
    assert problem.startswith(path), problem
    assert "ec-p256" in problem


def test_bad_deployer_type():
    data = base()
    data["frontends"]["web"]["deployer"]["type"] = "ftp"
    assert one_problem(data).startswith("frontends.web.deployer.type: ")


def test_bad_slugs():
    data = base()
    data["certificates"][0]["name"] = "Portal Site"
    assert one_problem(data).startswith("certificates[0].name: ")
    data = base()
    data["frontends"]["Web Site"] = data["frontends"].pop("web")
    data["certificates"][0]["frontends"] = []
    assert one_problem(data).startswith("frontends.Web Site")


def test_several_problems_each_with_a_path():
    data = base()
    data["acme"] = {"timeout": "30x", "email": "not-an-address"}
    data["frontends"]["web"]["tls_port"] = 70000
    found = problems(data)
    assert {p.split(":")[0] for p in found} == {
        "acme.timeout", "acme.email", "frontends.web.tls_port"}


def test_empty_lists():
    data = base()
    data["frontends"]["web"]["nodes"] = []
    assert one_problem(data).startswith("frontends.web.nodes: ")
    data = base()
    data["certificates"][0]["domains"] = []
    assert one_problem(data).startswith("certificates[0].domains: ")


def test_other_validators():
    assert one_problem({"acme": {"directory": "ftp://ca"}}).startswith("acme.directory: ")
    assert one_problem({"storage": "postgres://db"}).startswith("storage: ")
    assert one_problem({"log_level": "loud"}).startswith("log_level: ")
    assert one_problem({"acme": {"eab": {"kid": "k"}}}) == \
        "acme.eab: give the key as hmac_key or hmac_key_file (one of them)"


@pytest.mark.parametrize("data", [[1, 2], "text", 42])
def test_non_mapping_top_level(data):
    assert one_problem(data) == "top level: expected a mapping of keys"


def test_wrong_type_for_a_section():
    assert one_problem({"acme": "letsencrypt"}).startswith("acme: ")
    assert one_problem({"certificates": {"name": "x"}}).startswith("certificates: ")


def test_hmac_key_never_in_repr():
    cfg = parse({"acme": {"eab": {"kid": "kid-1", "hmac_key": "sup3r-secret"}}})
    assert "sup3r-secret" not in repr(cfg)


# --- loading files ----------------------------------------------------------------------

def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("state_dir: /x\nacme:\n  directory: [unclosed\nlog_level: info\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.source == str(path)
    (problem,) = info.value.problems
    assert "invalid YAML" in problem
    assert problem.startswith("line ")


def test_invalid_yaml_tab_indent_line_number(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("state_dir: /x\nacme:\n\tdirectory: x\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems[0].startswith("line 3, ")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems == ["file not found"]
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"state_dir: /caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.problems[0].startswith("cannot read")


def test_default_path_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CERTD_CONFIG", str(tmp_path / "c.yaml"))
    assert config.default_path() == tmp_path / "c.yaml"
    monkeypatch.delenv("CERTD_CONFIG")
    assert config.default_path() == Path("/etc/certd/config.yaml")


# --- the CLI around it (a real subprocess) ----------------------------------------------

def test_cli_bad_config_exits_2_with_key_path(tmp_path):
    data = base()
    data["frontends"]["web"]["nodes"][1]["address"] = "bad address!"
    data["acme"] = {"timeout": "99999999999999999d"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_certd(path, "check-config", cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result
    assert "frontends.web.nodes[1].address: " in result.stderr
    assert "acme.timeout: " in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_good_config_prints_a_summary(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(base()))
    result = run_certd(path, "check-config", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config OK: {path}")
    assert "frontend web: file deployer, nodes fe1=10.0.0.1, fe2=10.0.0.2" in result.stdout
    assert "certificate portal: portal.example.org, www.portal.example.org -> web" \
        in result.stdout
    assert "/var/lib/certd-test/certd.db" in result.stdout


@pytest.mark.parametrize("content", [
    "acme: {timeout: .inf}\n",
    "acme: {timeout: .nan}\n",
    "acme: {timeout: 99999999999999999d}\n",
    "acme: {timeout: 1e300}\n",
    "- just\n- a list\n",
    "acme: [unclosed\n",
    "\x00\x01binary",
])
def test_cli_main_never_raises_on_bad_config(tmp_path, capsys, content):
    # in-process (the subprocess tests above and below cover the real entry point): any
    # exception escaping main() would be a traceback for the operator
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert cli.main(["-c", str(path), "check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"certd: invalid config {path}:")


def test_cli_main_missing_config(tmp_path, capsys):
    assert cli.main(["-c", str(tmp_path / "missing.yaml"), "check-config"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_cli_main_example_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["-c", str(REPO / "config.example.yaml"), "check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config OK: ")
    assert "frontend local: file deployer, nodes node1=127.0.0.1" in out
    assert not (tmp_path / "state").exists(), "check-config must not create state"


def test_cli_main_without_command_exits_2(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out.lower()


def test_cli_version(tmp_path):
    result = run_certd(None, "--version", cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"certd {__version__}"
