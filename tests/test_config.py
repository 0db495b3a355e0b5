"""Broker settings: precedence (flags > env > file > defaults) and one-line errors naming the setting."""

import pytest

from broker.config import ConfigError, load_config, parse_voters, settings_table_markdown

pytestmark = pytest.mark.timeout(30)


def test_defaults_are_a_single_node_broker():
    config = load_config(environ={})
    assert (config.node_id, config.listen, config.data_dir) == (1, "127.0.0.1:9292", "./tidelog-data")
    assert config.auto_create_topics and config.flush_messages is None


def test_precedence_flags_over_env_over_file(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('node_id = 5\nlisten = "127.0.0.1:7000"\nsegment_bytes_max = 1000\n')
    env = {"TIDELOG_LISTEN": "127.0.0.1:7001", "TIDELOG_SEGMENT_BYTES_MAX": "2000"}
    config = load_config(file=path, environ=env, flags={"segment_bytes_max": "3000"})
    assert config.node_id == 5  # file only
    assert config.listen == "127.0.0.1:7001"  # env beats file
    assert config.segment_bytes_max == 3000  # flag beats env


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"environ": {"TIDELOG_SEGMENT_BYTES": "1"}}, "TIDELOG_SEGMENT_BYTES: unknown setting"),
        ({"flags": {"frame_bytes_max": "0"}}, "frame_bytes_max from flag --frame-bytes-max: 0 must be > 0"),
        ({"flags": {"retention_ms": "-5"}}, "retention_ms from flag --retention-ms: -5 must be -1"),
        ({"flags": {"flush_messages": "often"}}, "flush_messages from flag --flush-messages: invalid value"),
        ({"flags": {"listen": "9292"}}, "listen from flag --listen"),
        ({"flags": {"voters": "1@a:1,1@b:2"}}, "voter id 1 is listed twice"),
        ({"flags": {"log_format": "xml"}}, "must be one of kv, json"),
    ],
)
def test_bad_values_fail_with_one_line(kwargs, fragment):
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_and_bad_toml_in_file(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config(file=path, environ={})
    path.write_text("node_id = \n")
    with pytest.raises(ConfigError, match="not TOML"):
        load_config(file=path, environ={})
    with pytest.raises(ConfigError, match="No such file"):
        load_config(file=tmp_path / "missing.toml", environ={})


def test_voters_parse_and_table_lists_every_setting():
    assert parse_voters("1@127.0.0.1:9292,2@h:9392") == {1: ("127.0.0.1", 9292), 2: ("h", 9392)}
    table = settings_table_markdown()
    assert "`segment_bytes_max`" in table and "`flush_messages`" in table
