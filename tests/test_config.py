"""Tests for mushpi_ble.config: defaults, validation edges, sources and the generated example."""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
from pathlib import Path

import attrs
import pytest

from mushpi_ble import config, envfile
from mushpi_ble.config import (
    ENV_FILE_VARIABLE,
    NOTIFYING_CHARACTERISTICS,
    VARIABLES,
    ConfigError,
    Settings,
    load_settings,
    render_env_example,
    render_markdown_table,
)
from mushpi_ble.protocol import DEFAULT_POLICIES, Notify

REPO = Path(__file__).resolve().parent.parent
SPECS = {spec.name: spec for spec in VARIABLES}
UUID = "12345678-1234-5678-1234-56789abcdef0"


def load(**env: str) -> Settings:
    """Load from exactly the given variables, with no file."""
    return load_settings(env, env_file=None)


def assert_rejected(variable: str, value: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(**{variable: value})
    err = info.value
    allowed = SPECS[variable].allowed
    assert (err.variable, err.value, err.allowed) == (variable, value, allowed)
    message = str(err)
    assert message.startswith(f"{variable}={value!r}")
    assert f"allowed {allowed}" in message
    # Raised from the loader, not leaked from a parser: no chained traceback.
    assert err.__cause__ is None and err.__suppress_context__
    return err


@pytest.fixture(autouse=True)
def _no_stray_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so a developer's own .env cannot leak into a test."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


# --- defaults ---


def test_defaults_with_empty_environ() -> None:
    s = load_settings({})
    assert s.ble_backend == "bluez-dbus"
    assert s.dbus_bus_timeout_ms == 2500
    assert s.ble_adapter == "hci0"
    assert s.dbus_app_path == "/com/mushpi/gatt"
    assert s.ble_service_uuid == UUID
    assert s.ble_name_prefix == "MushPi"
    assert s.ble_adv_enable is True
    assert s.ble_adv_tx_power == "med"
    assert s.ble_actuator_status_enable is True
    assert s.ble_queue_max_size == 64
    assert s.ble_queue_put_timeout_ms == 10
    assert s.ble_backpressure_policy is None
    assert dict(s.policy_overrides) == {}
    assert s.ble_log_slow_publish_ms == 250
    assert s.ble_shutdown_timeout_ms == 1500
    assert s.ble_handler_timeout_ms == 5000
    assert s.ble_invalid_write == "reject"
    assert s.ble_metrics_port is None
    assert s.ble_metrics_bind == "127.0.0.1"
    assert s.ble_metrics_file is None
    assert s.sim_interval_s == 30
    assert s == Settings()


def test_seconds_properties() -> None:
    s = Settings()
    assert s.bus_timeout_s == 2.5
    assert s.queue_put_timeout_s == 0.01
    assert s.log_slow_publish_s == 0.25
    assert s.shutdown_timeout_s == 1.5
    assert s.handler_timeout_s == 5.0


def test_table_matches_settings_fields() -> None:
    fields = {f.name for f in attrs.fields(Settings)}
    assert {spec.attribute for spec in VARIABLES} == fields
    assert all(spec.name.startswith("MUSHPI_") for spec in VARIABLES)
    assert len(SPECS) == len(VARIABLES)


DECLARING = {"_var", "_int_var", "_choice_var", "_bool_var", "_policy_override_var"}


def test_each_setting_is_declared_once() -> None:
    """The fields of Settings are the one declaration: the table is read off them, and no
    second list of variables can come back beside the class without failing here."""
    derived = tuple(
        attrs.evolve(spec, attribute=field.name)
        for field in attrs.fields(Settings)
        for spec in field.metadata[config._SPECS]
    )
    assert derived == VARIABLES
    lists = [name for name, value in vars(config).items()
             if isinstance(value, tuple | list) and value
             and all(isinstance(item, config.VarSpec) for item in value)]
    assert lists == ["VARIABLES"]
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    (settings,) = [node for node in tree.body
                   if isinstance(node, ast.ClassDef) and node.name == "Settings"]
    helpers = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    inside = {id(node) for scope in (settings, *helpers) for node in ast.walk(scope)}
    declarations = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in DECLARING | {"VarSpec"}]
    assert declarations and all(id(node) in inside for node in declarations)
    names = [str(node.args[0].value) for node in ast.walk(settings) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in DECLARING - {
                 "_policy_override_var"} and isinstance(node.args[0], ast.Constant)]
    assert sorted(names) == sorted(spec.name for spec in VARIABLES if spec.key is None)


def test_field_defaults_are_the_parsed_table_defaults() -> None:
    defaults = {field.name: field.default for field in attrs.fields(Settings)}
    for spec in VARIABLES:
        if spec.key is None:
            parsed = None if spec.default is None else spec.parse(spec.default)
            assert defaults[spec.attribute] == parsed, spec.name


# --- valid edges and just-outside values, per variable ---

EDGES: list[tuple[str, str, list[tuple[str, object]], list[str]]] = [
    (
        "MUSHPI_BLE_BACKEND", "ble_backend",
        [("bluez-dbus", "bluez-dbus"), ("bluezero", "bluezero"), (" BlueZero ", "bluezero")],
        ["", "bluez", "bluez_dbus", "dbus"],
    ),
    ("MUSHPI_DBUS_BUS_TIMEOUT_MS", "dbus_bus_timeout_ms", [("100", 100), ("60000", 60000)],
     ["99", "60001"]),
    (
        "MUSHPI_BLE_ADAPTER", "ble_adapter",
        [("hci0", "hci0"), ("hci12", "hci12"), (" hci1 ", "hci1"),
         ("aa:bb:cc:dd:ee:0f", "AA:BB:CC:DD:EE:0F"), ("AA:BB:CC:DD:EE:FF", "AA:BB:CC:DD:EE:FF")],
        ["", "hci", "hcix", "hci01", "eth0", "AA:BB:CC:DD:EE", "AA:BB:CC:DD:EE:FG",
         "AA-BB-CC-DD-EE-FF", "AA:BB:CC:DD:EE:FF:00"],
    ),
    (
        "MUSHPI_DBUS_APP_PATH", "dbus_app_path",
        [("/", "/"), ("/a", "/a"), ("/com/mushpi/gatt_2", "/com/mushpi/gatt_2")],
        ["", "com/mushpi", "/com/", "//a", "/a//b", "/a-b", "/a.b", "/ä"],
    ),
    (
        "MUSHPI_BLE_SERVICE_UUID", "ble_service_uuid",
        [(UUID.upper(), UUID), ("00000000-0000-0000-0000-000000000000",
                                "00000000-0000-0000-0000-000000000000")],
        ["", "1234", UUID[:-1], UUID + "0", UUID.replace("-", ""), "{" + UUID + "}",
         "g" + UUID[1:], "urn:uuid:" + UUID],
    ),
    (
        "MUSHPI_BLE_NAME_PREFIX", "ble_name_prefix",
        [("M", "M"), ("A" * 12, "A" * 12), ("Mush Pi", "Mush Pi"), ("  MushPi  ", "MushPi")],
        ["", "   ", "A" * 13, "Mush\tPi", "Müsh"],
    ),
    (
        "MUSHPI_BLE_ADV_TX_POWER", "ble_adv_tx_power",
        [("low", "low"), ("med", "med"), ("HIGH", "high")],
        ["", "medium", "max"],
    ),
    ("MUSHPI_BLE_QUEUE_MAX_SIZE", "ble_queue_max_size", [("1", 1), ("4096", 4096)],
     ["0", "4097", "-1"]),
    ("MUSHPI_BLE_QUEUE_PUT_TIMEOUT_MS", "ble_queue_put_timeout_ms", [("0", 0), ("1000", 1000)],
     ["-1", "1001"]),
    (
        "MUSHPI_BLE_BACKPRESSURE_POLICY", "ble_backpressure_policy",
        [("drop_oldest", "drop_oldest"), ("drop_newest", "drop_newest"),
         ("Coalesce", "coalesce")],
        ["drop", "latest", "priority_high"],
    ),
    (
        "MUSHPI_BLE_NOTIFY_MODE", "ble_notify_mode",
        [("auto", "auto"), ("Signal", "signal"), ("socket", "socket")],
        ["", "sockets", "signals", "both"],
    ),
    ("MUSHPI_BLE_LOG_SLOW_PUBLISH_MS", "ble_log_slow_publish_ms", [("1", 1), ("60000", 60000)],
     ["0", "60001"]),
    ("MUSHPI_BLE_SHUTDOWN_TIMEOUT_MS", "ble_shutdown_timeout_ms", [("50", 50), ("30000", 30000)],
     ["49", "30001"]),
    ("MUSHPI_BLE_HANDLER_TIMEOUT_MS", "ble_handler_timeout_ms", [("10", 10), ("25000", 25000)],
     ["9", "25001", "30000"]),
    ("MUSHPI_BLE_NOTIFY_INTERVAL_MS", "ble_notify_interval_ms",
     [("0", 0), ("5", 5), ("1000", 1000)], ["-1", "1001", "", "2.5"]),
    ("MUSHPI_BLE_READ_CACHE_MS", "ble_read_cache_ms", [("0", 0), ("500", 500), ("60000", 60000)],
     ["-1", "60001", ""]),
    (
        "MUSHPI_BLE_INVALID_WRITE", "ble_invalid_write",
        [("reject", "reject"), ("ignore", "ignore")],
        ["", "accept", "drop"],
    ),
    (
        "MUSHPI_BLE_PAIRING", "ble_pairing",
        [("just-works", "just-works"), ("OFF", "off"), (" off ", "off"), ("Window", "window"),
         ("passkey", "passkey"), ("", None)],
        ["on", "justworks", "pin", "windowed"],
    ),
    (
        "MUSHPI_BLE_WRITE_ACCESS", "ble_write_access",
        [("open", "open"), (" Bonded ", "bonded")],
        ["", "closed", "paired", "true"],
    ),
    (
        "MUSHPI_BLE_READ_ACCESS", "ble_read_access",
        [("OPEN", "open"), ("bonded", "bonded")],
        ["", "bonded-only", "false"],
    ),
    ("MUSHPI_BLE_PAIRING_WINDOW_BONDS", "ble_pairing_window_bonds",
     [("0", 0), ("1", 1), ("100", 100)], ["-1", "101", "", "1.5"]),
    (
        "MUSHPI_BLE_METRICS_PORT", "ble_metrics_port",
        [("1", 1), ("65535", 65535), ("", None), ("  ", None)],
        ["0", "65536", "http"],
    ),
    (
        "MUSHPI_BLE_METRICS_BIND", "ble_metrics_bind",
        [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "0.0.0.0"), ("::1", "::1"),
         ("0:0:0:0:0:0:0:1", "::1")],
        ["", "localhost", "256.0.0.1", "1.2.3", "127.0.0.1:9100"],
    ),
    ("MUSHPI_SIM_INTERVAL_S", "sim_interval_s", [("5", 5), ("300", 300)], ["4", "301"]),
    ("MUSHPI_BLE_MANUFACTURER", "ble_manufacturer", [("Acme", "Acme"), ("x" * 64, "x" * 64)],
     ["", "x" * 65, "a\tb"]),
    ("MUSHPI_BLE_MODEL", "ble_model", [("Grow Box 2", "Grow Box 2")], ["", "x" * 65]),
    ("MUSHPI_BLE_FIRMWARE_REVISION", "ble_firmware_revision", [("2.3.1", "2.3.1")],
     ["x" * 65, "1\n2"]),
    ("MUSHPI_BLE_ADVERT_FAST_MS", "ble_advert_fast_ms", [("20", 20), ("418", 418)],
     ["19", "10241", "20.5", ""]),
    ("MUSHPI_BLE_ADVERT_FAST_S", "ble_advert_fast_s", [("0", 0), ("3600", 3600)],
     ["-1", "3601", "1.5"]),
    ("MUSHPI_BLE_ADVERT_SLOW_MS", "ble_advert_slow_ms", [("418", 418), ("10240", 10240)],
     ["19", "10241", "417.5"]),
]

BOOLS = [
    "MUSHPI_BLE_ADV_ENABLE", "MUSHPI_BLE_ACTUATOR_STATUS_ENABLE", "MUSHPI_BLE_ADAPTER_RECOVERY",
    "MUSHPI_BLE_SYSTEMD_NOTIFY",
    "MUSHPI_BLE_ADVERT_INTERVALS", "MUSHPI_BLE_DEVICE_INFO",
]
POLICY_OVERRIDES = [f"MUSHPI_BLE_POLICY_{name}" for name in NOTIFYING_CHARACTERISTICS]
# need a real directory: tested with tmp_path (the state directory in test_bonded.py)
OTHERS = ["MUSHPI_BLE_METRICS_FILE", "MUSHPI_BLE_STATE_DIR"]


def test_every_variable_is_covered() -> None:
    covered = {name for name, *_ in EDGES} | set(BOOLS) | set(POLICY_OVERRIDES) | set(OTHERS)
    assert covered == set(SPECS)
    assert len(INT_VARIABLES) == 14


def test_the_slow_advertising_interval_is_at_least_the_fast_one() -> None:
    assert load(MUSHPI_BLE_ADVERT_FAST_MS="100", MUSHPI_BLE_ADVERT_SLOW_MS="100")
    with pytest.raises(ConfigError) as info:
        load(MUSHPI_BLE_ADVERT_FAST_MS="100", MUSHPI_BLE_ADVERT_SLOW_MS="50")
    assert info.value.variable == "MUSHPI_BLE_ADVERT_SLOW_MS"
    assert "MUSHPI_BLE_ADVERT_FAST_MS" in str(info.value)


@pytest.mark.parametrize(
    ("variable", "attribute", "raw", "expected"),
    [(v, a, raw, exp) for v, a, valid, _ in EDGES for raw, exp in valid],
)
def test_valid_values(variable: str, attribute: str, raw: str, expected: object,
                      tmp_path: Path) -> None:
    env = {variable: raw}
    if expected == "bonded":  # bonded access keeps its approved phones in the state dir
        env["MUSHPI_BLE_STATE_DIR"] = str(tmp_path)
    assert getattr(load(**env), attribute) == expected


@pytest.mark.parametrize(
    ("variable", "raw"), [(v, raw) for v, _, _, invalid in EDGES for raw in invalid]
)
def test_invalid_values(variable: str, raw: str) -> None:
    assert_rejected(variable, raw)


INT_VARIABLES = [
    spec.name for spec in VARIABLES if re.fullmatch(r"\d+\.\.\d+( or empty \(off\))?", spec.allowed)
]


@pytest.mark.parametrize("variable", INT_VARIABLES)
@pytest.mark.parametrize("raw", ["10.5", "abc", "1e3", "0x10", "1_0", "١٠", "10 0"])
def test_integers_reject_non_integers(variable: str, raw: str) -> None:
    err = assert_rejected(variable, raw)
    assert err.problem == "not an integer"


@pytest.mark.parametrize("variable", [v for v in INT_VARIABLES if SPECS[v].default is not None])
def test_required_integer_rejects_empty(variable: str) -> None:
    assert_rejected(variable, "")


def test_integer_whitespace_and_sign() -> None:
    assert load(MUSHPI_BLE_QUEUE_MAX_SIZE=" 128\t").ble_queue_max_size == 128
    assert load(MUSHPI_BLE_QUEUE_MAX_SIZE="+7").ble_queue_max_size == 7
    assert load(MUSHPI_BLE_QUEUE_MAX_SIZE="007").ble_queue_max_size == 7


def test_error_value_is_the_raw_text() -> None:
    err = assert_rejected("MUSHPI_BLE_QUEUE_MAX_SIZE", " 0 ")
    assert str(err) == "MUSHPI_BLE_QUEUE_MAX_SIZE=' 0 ' is invalid: allowed 1..4096"


# --- booleans ---

TRUE_SPELLINGS = ["true", "True", "TRUE", "1", "yes", "YES", "on", "On", " true "]
FALSE_SPELLINGS = ["false", "False", "0", "no", "No", "off", "OFF", " off "]


@pytest.mark.parametrize("variable", BOOLS)
@pytest.mark.parametrize("raw", TRUE_SPELLINGS)
def test_bool_true_spellings(variable: str, raw: str) -> None:
    assert getattr(load(**{variable: raw}), SPECS[variable].attribute) is True


@pytest.mark.parametrize("variable", BOOLS)
@pytest.mark.parametrize("raw", FALSE_SPELLINGS)
def test_bool_false_spellings(variable: str, raw: str) -> None:
    assert getattr(load(**{variable: raw}), SPECS[variable].attribute) is False


@pytest.mark.parametrize("variable", BOOLS)
@pytest.mark.parametrize("raw", ["", "2", "y", "n", "enabled", "truee", "-1"])
def test_bool_rejects_other_spellings(variable: str, raw: str) -> None:
    assert_rejected(variable, raw)


# --- back-pressure policy ---


@pytest.mark.parametrize("raw", ["priority", "PRIORITY", " Priority "])
def test_legacy_priority_means_drop_oldest_with_warning(
    raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mushpi_ble.config"):
        s = load(MUSHPI_BLE_BACKPRESSURE_POLICY=raw)
    assert s.ble_backpressure_policy == "drop_oldest"
    assert all(s.policy_for(name) == "drop_oldest" for name in NOTIFYING_CHARACTERISTICS)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "MUSHPI_BLE_BACKPRESSURE_POLICY" in text and "priority" in text
    assert "drop_oldest" in text


def test_no_warning_for_current_values(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mushpi_ble.config"):
        load(MUSHPI_BLE_BACKPRESSURE_POLICY="coalesce", MUSHPI_BLE_QUEUE_MAX_SIZE="8")
    assert caplog.records == []


def test_per_characteristic_policy_override() -> None:
    s = load(
        MUSHPI_BLE_BACKPRESSURE_POLICY="drop_newest",
        MUSHPI_BLE_POLICY_ENV_MEASUREMENTS="coalesce",
        MUSHPI_BLE_POLICY_STATUS_FLAGS=" Drop_Oldest ",
        MUSHPI_BLE_POLICY_ACTUATOR_STATUS="",
    )
    assert s.policy_for("ENV_MEASUREMENTS") == "coalesce"
    assert s.policy_for("env_measurements") == "coalesce"
    assert s.policy_for("STATUS_FLAGS") == "drop_oldest"
    assert s.policy_for("ACTUATOR_STATUS") == "drop_newest"
    assert dict(s.policy_overrides) == {
        "ENV_MEASUREMENTS": "coalesce",
        "STATUS_FLAGS": "drop_oldest",
    }


@pytest.mark.parametrize("variable", POLICY_OVERRIDES)
@pytest.mark.parametrize("raw", ["priority", "drop", "latest"])
def test_policy_override_rejects_bad_values(variable: str, raw: str) -> None:
    # The legacy 'priority' is only accepted on the variable that historically had it.
    assert_rejected(variable, raw)


@pytest.mark.parametrize("suffix", ["ENV_MEASUREMENT", "CONTROL_TARGETS", "env_measurements", ""])
def test_unknown_policy_characteristic_is_an_error(suffix: str) -> None:
    variable = "MUSHPI_BLE_POLICY_" + suffix
    with pytest.raises(ConfigError) as info:
        load(**{variable: "coalesce"})
    err = info.value
    assert err.variable == variable and err.value == "coalesce"
    assert str(err).startswith(f"{variable}='coalesce' is invalid: unknown characteristic")
    for name in NOTIFYING_CHARACTERISTICS:
        assert name in err.allowed


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        # nothing set: each characteristic's own policy from the table (state snapshots
        # coalesce: the last value wins)
        ({}, {"ENV_MEASUREMENTS": "coalesce", "STATUS_FLAGS": "coalesce",
              "ACTUATOR_STATUS": "coalesce"}),
        ({"MUSHPI_BLE_BACKPRESSURE_POLICY": ""},
         {"ENV_MEASUREMENTS": "coalesce", "STATUS_FLAGS": "coalesce",
          "ACTUATOR_STATUS": "coalesce"}),
        # the global setting, when set, is every characteristic's (the old meaning)
        ({"MUSHPI_BLE_BACKPRESSURE_POLICY": "drop_oldest"},
         {"ENV_MEASUREMENTS": "drop_oldest", "STATUS_FLAGS": "drop_oldest",
          "ACTUATOR_STATUS": "drop_oldest"}),
        # a characteristic's own setting wins over both
        ({"MUSHPI_BLE_BACKPRESSURE_POLICY": "drop_newest",
          "MUSHPI_BLE_POLICY_STATUS_FLAGS": "coalesce"},
         {"ENV_MEASUREMENTS": "drop_newest", "STATUS_FLAGS": "coalesce",
          "ACTUATOR_STATUS": "drop_newest"}),
        ({"MUSHPI_BLE_POLICY_ENV_MEASUREMENTS": "drop_oldest"},
         {"ENV_MEASUREMENTS": "drop_oldest", "STATUS_FLAGS": "coalesce",
          "ACTUATOR_STATUS": "coalesce"}),
    ],
)
def test_policy_precedence(environ: dict[str, str], expected: dict[str, str]) -> None:
    s = load(**environ)
    assert {name: s.policy_for(name) for name in NOTIFYING_CHARACTERISTICS} == expected


def test_table_declares_every_notifying_policy() -> None:
    assert set(DEFAULT_POLICIES) == {name.lower() for name in NOTIFYING_CHARACTERISTICS}
    with pytest.raises(ValueError, match="unknown policy 'newest'"):
        Notify(policy="newest")


def test_policy_for_unknown_characteristic() -> None:
    with pytest.raises(ValueError, match="CONTROL_TARGETS"):
        Settings().policy_for("CONTROL_TARGETS")


# --- metrics file ---


def test_metrics_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    assert load(MUSHPI_BLE_METRICS_FILE=str(target)).ble_metrics_file == target
    assert load(MUSHPI_BLE_METRICS_FILE=f"  {target}  ").ble_metrics_file == target
    assert load(MUSHPI_BLE_METRICS_FILE="").ble_metrics_file is None


def test_metrics_file_relative_is_made_absolute() -> None:
    s = load(MUSHPI_BLE_METRICS_FILE="metrics.json")
    assert s.ble_metrics_file == Path.cwd() / "metrics.json"


def test_metrics_file_rejects_missing_directory_and_directories(tmp_path: Path) -> None:
    err = assert_rejected("MUSHPI_BLE_METRICS_FILE", str(tmp_path / "nope" / "m.json"))
    assert "does not exist" in str(err)
    err = assert_rejected("MUSHPI_BLE_METRICS_FILE", str(tmp_path))
    assert "is a directory" in str(err)


# --- unknown variables ---


def test_unknown_mushpi_variables_are_warned_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mushpi_ble.config"):
        s = load(
            MUSHPI_BLE_QUEUE_MAX_SIZ="8",
            MUSHPI_SOMETHING_ELSE="x",
            OTHER_APP_SETTING="y",
            MUSHPI_VENV="/opt/venv",
        )
    assert s == Settings()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "MUSHPI_BLE_QUEUE_MAX_SIZ " in text
    assert "did_you_mean=MUSHPI_BLE_QUEUE_MAX_SIZE" in text
    assert "MUSHPI_SOMETHING_ELSE" in text
    assert "OTHER_APP_SETTING" not in text
    assert "MUSHPI_VENV" not in text


# --- sources: .env file, environment precedence, MUSHPI_ENV_FILE ---


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "settings.env"
    env_file.write_text(
        "# comment\n"
        "MUSHPI_BLE_QUEUE_MAX_SIZE=128\n"
        'MUSHPI_BLE_NAME_PREFIX="Grow Box"\n'
        "export MUSHPI_BLE_ADV_ENABLE=off\n"
        "MUSHPI_BLE_METRICS_PORT=\n"
        "UNRELATED=1\n"
    )
    s = load_settings({}, env_file=env_file)
    assert s.ble_queue_max_size == 128
    assert s.ble_name_prefix == "Grow Box"
    assert s.ble_adv_enable is False
    assert s.ble_metrics_port is None
    assert s.ble_adapter == "hci0"


def test_env_file_does_not_interpolate(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("MUSHPI_BLE_NAME_PREFIX=${USER}\n")
    assert load_settings({"USER": "pi"}, env_file=env_file).ble_name_prefix == "${USER}"


def test_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=128\nMUSHPI_SIM_INTERVAL_S=60\n")
    s = load_settings({"MUSHPI_BLE_QUEUE_MAX_SIZE": "256"}, env_file=env_file)
    assert s.ble_queue_max_size == 256
    assert s.sim_interval_s == 60


def test_environment_wins_even_over_an_invalid_file_value(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=0\n")
    s = load_settings({"MUSHPI_BLE_QUEUE_MAX_SIZE": "5"}, env_file=env_file)
    assert s.ble_queue_max_size == 5


def test_invalid_file_value_names_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=0\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, env_file=env_file)
    assert info.value.source == str(env_file)
    assert str(info.value) == (
        f"MUSHPI_BLE_QUEUE_MAX_SIZE='0' (from {env_file}) is invalid: allowed 1..4096"
    )


def test_default_env_file_in_current_directory() -> None:
    Path(".env").write_text("MUSHPI_BLE_ADV_TX_POWER=high\n")
    assert load_settings({}).ble_adv_tx_power == "high"
    assert load_settings({}, env_file=None).ble_adv_tx_power == "med"


def test_missing_env_file_is_ignored(tmp_path: Path) -> None:
    assert load_settings({}, env_file=tmp_path / "absent.env") == Settings()
    assert load_settings({}) == Settings()


def test_mushpi_env_file_names_another_file(tmp_path: Path) -> None:
    Path(".env").write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=100\nMUSHPI_SIM_INTERVAL_S=10\n")
    other = tmp_path / "other.env"
    other.write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=200\n")
    s = load_settings({ENV_FILE_VARIABLE: str(other)})
    assert s.ble_queue_max_size == 200
    assert s.sim_interval_s == 30  # ./.env was replaced, not merged
    s = load_settings({ENV_FILE_VARIABLE: str(other)}, env_file=None)
    assert s.ble_queue_max_size == 200


def test_empty_mushpi_env_file_means_default_file() -> None:
    Path(".env").write_text("MUSHPI_BLE_QUEUE_MAX_SIZE=100\n")
    assert load_settings({ENV_FILE_VARIABLE: " "}).ble_queue_max_size == 100


def test_mushpi_env_file_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.env")
    with pytest.raises(ConfigError) as info:
        load_settings({ENV_FILE_VARIABLE: missing})
    assert info.value.variable == ENV_FILE_VARIABLE
    assert info.value.value == missing
    assert str(info.value).startswith(f"{ENV_FILE_VARIABLE}={missing!r} is invalid")


def test_env_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"MUSHPI_BLE_NAME_PREFIX=\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, env_file=env_file)
    assert info.value.variable == ENV_FILE_VARIABLE


def test_environ_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MUSHPI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MUSHPI_BLE_QUEUE_MAX_SIZE", "9")
    assert load_settings().ble_queue_max_size == 9


# --- the generated .env.example ---


def test_env_example_in_sync() -> None:
    committed = (REPO / ".env.example").read_text(encoding="utf-8")
    assert committed == render_env_example(), (
        "regenerate: python -c 'from mushpi_ble.config import render_env_example as r; "
        "open(\".env.example\", \"w\").write(r())'"
    )


def test_env_example_lists_every_variable_with_comment() -> None:
    lines = render_env_example().splitlines()
    for spec in VARIABLES:
        line = f"# {spec.name}={spec.default or ''}"
        assert line in lines
        above = lines[lines.index(line) - 1]
        assert above.startswith("# ") and spec.comment in above and spec.allowed in above


def test_env_example_as_is_and_uncommented_changes_nothing(tmp_path: Path) -> None:
    example = render_env_example()
    as_is = tmp_path / "as_is.env"
    as_is.write_text(example)
    parsed = envfile.parse(example)
    assert parsed.values == {} and parsed.problems == ()
    uncommented = tmp_path / "uncommented.env"
    uncommented.write_text(
        "\n".join(
            line.removeprefix("# ") if line.startswith("# MUSHPI_") else line
            for line in example.splitlines()
        )
    )
    parsed = envfile.parse(uncommented.read_text())
    assert set(parsed.values) == set(SPECS) and parsed.problems == ()
    assert load_settings({}, env_file=uncommented) == Settings()


def test_markdown_table_lists_every_variable() -> None:
    table = render_markdown_table()
    for spec in VARIABLES:
        assert f"`{spec.name}`" in table


# --- Settings as a value ---


def test_settings_is_frozen() -> None:
    s = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.ble_queue_max_size = 1  # type: ignore[misc]
    overrides = load(MUSHPI_BLE_POLICY_STATUS_FLAGS="coalesce").policy_overrides
    with pytest.raises(TypeError):
        overrides["STATUS_FLAGS"] = "drop_newest"  # type: ignore[index]


def test_settings_hashable_and_comparable() -> None:
    a = load(MUSHPI_BLE_POLICY_STATUS_FLAGS="coalesce")
    b = load(MUSHPI_BLE_POLICY_STATUS_FLAGS="coalesce")
    assert a == b and hash(a) == hash(b)
    assert a != Settings()


def test_evolve_is_validated_like_loading() -> None:
    s = Settings()
    assert attrs.evolve(s, ble_queue_max_size=1).ble_queue_max_size == 1
    with pytest.raises(ConfigError, match=r"MUSHPI_BLE_QUEUE_MAX_SIZE='0' is invalid"):
        attrs.evolve(s, ble_queue_max_size=0)
    with pytest.raises(ConfigError, match="not normalised"):
        attrs.evolve(s, ble_adapter="aa:bb:cc:dd:ee:ff")
    with pytest.raises(ConfigError, match="MUSHPI_BLE_BACKPRESSURE_POLICY"):
        attrs.evolve(s, ble_backpressure_policy="priority")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown characteristic"):
        Settings(policy_overrides={"NOPE": "coalesce"})


def test_config_error_pickles() -> None:
    err = ConfigError("MUSHPI_X", "1", "2..3", "too small", ".env")
    copy = pickle.loads(pickle.dumps(err))
    assert isinstance(copy, ConfigError) and isinstance(copy, ValueError)
    assert str(copy) == str(err)
    assert (copy.variable, copy.value, copy.allowed) == ("MUSHPI_X", "1", "2..3")


# --- settings files read strictly (as systemd's EnvironmentFile reads them) ---


def test_an_unterminated_quote_stops_start_up_naming_file_line_and_variable(
    tmp_path: Path,
) -> None:
    """A lenient reader dropped this line and left reads open."""
    env_file = tmp_path / "ble.env"
    env_file.write_text('MUSHPI_BLE_QUEUE_MAX_SIZE=64\nMUSHPI_BLE_READ_ACCESS="bonded\n')
    with pytest.raises(ConfigError) as info:
        load_settings({}, env_file=env_file)
    assert info.value.variable == "MUSHPI_BLE_READ_ACCESS"
    assert info.value.source == f"{env_file}:2"
    assert "line 2: no closing \"" in str(info.value)


def test_every_bad_line_and_value_is_reported_at_once(tmp_path: Path) -> None:
    env_file = tmp_path / "ble.env"
    env_file.write_text(
        "MUSHPI_BLE_QUEUE_MAX_SIZE=0\n"
        "MUSHPI_BLE_WRITE_ACCESS=bonded   # only paired phones\n"
        "MUSHPI_BLE_ADAPTER\n"
        "this is not a setting\n"
        "MUSHPI_BLE_NAME_PREFIX='Grow' box\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings({"MUSHPI_BLE_ADV_TX_POWER": "loud"}, env_file=env_file)
    named = {(e.variable, e.source) for e in info.value.all}
    assert named == {
        ("MUSHPI_BLE_WRITE_ACCESS", f"{env_file}:2"),
        ("MUSHPI_BLE_ADAPTER", f"{env_file}:3"),
        ("MUSHPI_ENV_FILE", f"{env_file}:4"),
        ("MUSHPI_BLE_NAME_PREFIX", f"{env_file}:5"),
        ("MUSHPI_BLE_QUEUE_MAX_SIZE", str(env_file)),
        ("MUSHPI_BLE_ADV_TX_POWER", None),
    }
    message = str(info.value)
    assert len(message.splitlines()) == 6
    assert "inline comment" in message and "write MUSHPI_BLE_ADAPTER= to leave it unset" in message


def test_settings_files_read_like_systemd(tmp_path: Path) -> None:
    """Quotes are the value's whole text; a # inside an unquoted value of another program's
    variable is not ours to judge; ; and # lines are comments."""
    parsed = envfile.parse(
        "; a comment\n"
        "  # another\n"
        'A="say \\"hi\\" \\\\ \\$HOME"\n'
        "B='literal \\n # not a comment'\n"
        "OTHER=x # theirs\n"
        "export C = spaced  \n",
        strict_prefix="MUSHPI_",
    )
    assert parsed.problems == ()
    assert parsed.values == {"A": 'say "hi" \\ $HOME', "B": "literal \\n # not a comment",
                             "OTHER": "x # theirs", "C": "spaced"}


def test_config_errors_keep_every_error_across_a_process_boundary() -> None:
    import pickle

    with pytest.raises(ConfigError) as info:
        load_settings({"MUSHPI_BLE_QUEUE_MAX_SIZE": "0", "MUSHPI_BLE_ADV_TX_POWER": "x"},
                      env_file=None)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and len(copy.all) == 2
