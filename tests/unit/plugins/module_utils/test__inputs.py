from __future__ import annotations

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._inputs import (
    InputError,
    check_bool,
    check_command,
    check_name,
    check_path,
    check_strings,
    check_url,
    redact_url,
    shown,
)


def _message(function, *args, **kwargs) -> str:
    with pytest.raises(InputError) as excinfo:
        function(*args, **kwargs)
    return str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("eu-west\n", "host 'h1': fleet_region 'eu-west\\n' contains the control character '\\n' at position 7"),
        ("r" * (1024 * 1024), "host 'h1': fleet_region 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... (1048576 characters) is longer than 128 characters"),
        ("t" * 129, "host 'h1': fleet_region 'tttttttttttttttttttttttttttttttttttttttt'... (129 characters) is longer than 128 characters"),
        ("eu west", "host 'h1': fleet_region 'eu west' does not match [A-Za-z0-9][A-Za-z0-9._:@+-]*"),
        ("region=x", "host 'h1': fleet_region 'region=x' does not match"),
        ("", "host 'h1': fleet_region must be a non-empty string"),
        (["eu-west"], "host 'h1': fleet_region must be a string, got a list"),
        (5, "host 'h1': fleet_region must be a string, got 5"),
    ],
)
def test_check_name(value, message: str) -> None:
    assert _message(check_name, value, field="fleet_region", where="host 'h1'").startswith(message)


def test_names_of_128_characters_pass() -> None:
    assert check_name("a" * 128, field="x") == "a" * 128


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://127.0.0.1:8080/health check", "u 'http://127.0.0.1:8080/health check' contains whitespace at position 28; percent-encode it (%20)"),
        ("http://127.0.0.1/\x7f", "u 'http://127.0.0.1/\\x7f' contains the control character '\\x7f' at position 17"),
        ("http://127.0.0.1/\u0085", "u 'http://127.0.0.1/\\x85' contains the control character '\\x85' at position 17"),
        ("http://127.0.0.1/\u3000x", "u 'http://127.0.0.1/\\u3000x' contains whitespace at position 17; percent-encode it (%20)"),
        ("ftp://h/x", "u 'ftp://h/x' has scheme ftp://; allowed: http://, https://, file://"),
        ("h/x", "u 'h/x' has scheme (none); allowed: http://, https://, file://"),
        ("http:///x", "u 'http:///x' has no host"),
        ("http://h:0/x", "u 'http://h:0/x' has port 0"),
        ("http://h:x/", "u 'http://h:x/' is not a valid URL: Port could not be cast to integer value as 'x'"),
        ("http://[::1/x", "u 'http://[::1/x' is not a valid URL: Invalid IPv6 URL"),
        ("http://h\\@evil/x", "u 'http://h\\\\@evil/x' contains a backslash, which clients read differently"),
        ("file://host/x", "u 'file://host/x' must be file:///absolute/path"),
        ("u" * 5000, "u 'uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu'... (5000 characters) is longer than 4096 characters"),
    ],
)
def test_check_url(value: str, message: str) -> None:
    assert _message(check_url, value, field="u") == message


@pytest.mark.parametrize("value", ["http://127.0.0.1:8080/health", "https://user:pw@h.example/a?b=c", "file:///srv/a.tgz", "HTTPS://H/x"])
def test_good_urls(value: str) -> None:
    assert check_url(value, field="u") == value


def test_url_schemes_can_be_narrowed() -> None:
    assert _message(check_url, "file:///x", field="u", schemes=("http", "https")) == "u 'file:///x' has scheme file://; allowed: http://, https://"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://user:pw@h.example/a?b=c", "https://***@h.example/a?b=c"),
        ("https://token@h:8443/a", "https://***@h:8443/a"),
        ("https://h.example/a", "https://h.example/a"),
        ("file:///srv/a", "file:///srv/a"),
    ],
)
def test_redact_url(url: str, masked: str) -> None:
    assert redact_url(url) == masked


def test_paths_commands_bools() -> None:
    assert _message(check_path, "srv/x", field="p") == "p 'srv/x' must be an absolute path"
    assert _message(check_command, [], field="c") == "c must be an argv list of strings or a string, got a list"
    assert _message(check_command, ["/bin/true", 5], field="c") == "c[1] must be a string, got 5"
    assert check_command(["systemctl", "restart", "myapp"], field="c") == ["systemctl", "restart", "myapp"]
    assert [check_bool(value, field="b") for value in (True, "true", "yes", "1", 1, "false", "no", "0", "", 0)] == [True] * 5 + [False] * 5
    assert _message(check_bool, "maybe", field="b", where="manifest") == "manifest: b must be a boolean (true/false), got 'maybe'"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"a": {"b": ["ok", "bad\x00"]}}, "policy: a.b[1] 'bad\\x00' contains the control character '\\x00' at position 3"),
        ({"a": "x" * 70000}, "policy: a 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (70000 characters) is longer than 65536 characters"),
        ({1: "x"}, "policy: mapping has a key that is not a string: 1"),
        ({"k" * 200: "x"}, "policy: key 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk'... (200 characters) is longer than 128 characters"),
    ],
)
def test_check_strings(data, message: str) -> None:
    assert _message(check_strings, data, where="policy") == message


def test_check_strings_allows_free_text_lines_and_bounds_the_walk() -> None:
    check_strings({"script": "line 1\n\tline 2"}, where="policy")
    assert _message(check_strings, [[1]] * 10, where="policy", max_items=5) == "policy: more than 5 values; refusing to read further"


def test_shown() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * 41) == "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (41 characters)"
    assert shown({"a": 1}) == "a dict"
    assert shown(None) == "None"
