import re

import pytest

from ownllm.config import ConfigError, load_config, settings_table


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8000
    assert config.model.model == "smollm2-135m-instruct"
    assert config.store.url.startswith("sqlite:///")


def test_precedence_file_env_flags(tmp_path):
    path = tmp_path / "ownllm.toml"
    path.write_text('[server]\nport = 9001\nhost = "0.0.0.0"\n[model]\ndtype = "float32"\n')
    config = load_config(path, env={})
    assert (config.server.port, config.server.host, config.model.dtype) == (
        9001,
        "0.0.0.0",
        "float32",
    )
    config = load_config(path, env={"OWNLLM_PORT": "9002"})
    assert config.server.port == 9002 and config.server.host == "0.0.0.0"
    config = load_config(path, env={"OWNLLM_PORT": "9002"}, overrides={"server": {"port": 9003}})
    assert config.server.port == 9003


def test_env_names_for_data_dir_and_database(tmp_path):
    config = load_config(
        env={"OWNLLM_HOME": str(tmp_path), "OWNLLM_DATABASE_URL": "postgresql+psycopg://u@h/db"}
    )
    assert config.store.home == tmp_path
    assert config.store.url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    "overrides, env, message",
    [
        (
            {"server": {"port": 70000}},
            {},
            "server.port = 70000 (from --port): must be between 1 and 65535",
        ),
        (
            {"model": {"dtype": "int3"}},
            {},
            "model.dtype = 'int3' (from --dtype): must be one of auto",
        ),
        ({}, {"OWNLLM_PORT": "eighty"}, "server.port = 'eighty' (from OWNLLM_PORT): expected int"),
        ({}, {"OWNLLM_ENGINE_MAX_NUM_SEQS": "0"}, "engine.max_num_seqs = '0'"),
    ],
)
def test_bad_values_name_field_value_and_allowed(overrides, env, message):
    with pytest.raises(ConfigError) as info:
        load_config(env=env, overrides=overrides)
    assert str(info.value).startswith(message)


def test_bad_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting server.prot"):
        load_config(path, env={})
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", env={})


def test_config_is_frozen():
    config = load_config(env={})
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


def test_readme_lists_every_setting():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert settings_table() in readme, (
        "README's configuration table is stale: run `ownllm config --table`"
    )


def test_model_generation_table_file_then_env(tmp_path):
    path = tmp_path / "ownllm.toml"
    path.write_text("[model.generation]\ntemperature = 0.2\ntop_k = 40\n")
    generation = load_config(path, env={}).model.generation
    assert (generation.temperature, generation.top_k, generation.top_p) == (0.2, 40, None)
    env = {"OWNLLM_MODEL_GENERATION_TEMPERATURE": "0", "OWNLLM_MODEL_GENERATION_TOP_P": "0.9"}
    generation = load_config(path, env=env).model.generation
    assert generation.as_dict() == {"temperature": 0.0, "top_p": 0.9, "top_k": 40}
    assert load_config(env={}).model.generation.as_dict() == {}  # unset: the model's own


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model.generation]\ntemperature = 3\n", "model.generation.temperature = 3 (from "),
        ("[model.generation]\ntemperature = true\n", "model.generation.temperature = True"),
        ("[model.generation]\ntop_k = 0.5\n", "model.generation.top_k = 0.5"),
        ("[model.generation]\ntemprature = 0\n", "unknown setting model.generation.temprature"),
        ("[model]\ngeneration = 0.2\n", "[model.generation] must be a table"),
    ],
)
def test_bad_model_generation_is_one_line(tmp_path, text, message):
    path = tmp_path / "ownllm.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, env={})


def test_routing_section_and_its_policy_tables(tmp_path):
    path = tmp_path / "ownllm.toml"
    path.write_text(
        '[routing]\nstrategy = "least_loaded"\nprefix_weight = 3\n'
        '[[routing.policy]]\ntenant = "acme"\nmode = "overflow"\nremote = "paid"\n'
        "queue_threshold = 4\n"
        '[[routing.policy]]\nmodel = "gpt-4o-mini"\nmode = "route"\nremote = "paid"\n'
    )
    routing = load_config(path, env={"OWNLLM_ROUTING_QUEUE_WEIGHT": "5"}).routing
    assert (routing.strategy, routing.prefix_weight, routing.queue_weight) == (
        "least_loaded", 3.0, 5.0,
    )  # fmt: skip
    assert [(p.tenant, p.model, p.mode, p.remote, p.queue_threshold) for p in routing.policy] == [
        ("acme", "*", "overflow", "paid", 4),
        ("*", "gpt-4o-mini", "route", "paid", 16),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ('[routing]\npolicy = "x"\n', "routing.policy must be a list"),
        ('[[routing.policy]]\nmode = "sometimes"\n', r"routing.policy\[0\].mode = 'sometimes'"),
        ('[[routing.policy]]\ncolour = "red"\n', r"unknown setting routing.policy\[0\].colour"),
        ('[routing]\nstrategy = "random"\n', "must be one of affinity, round_robin, least_loaded"),
    ],
)
def test_bad_routing_settings_name_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "ownllm.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_backends_tables(tmp_path):
    path = tmp_path / "ownllm.toml"
    path.write_text(
        """
[[backends]]
kind = "vllm"
url = "http://127.0.0.1:8100"
command = ["python", "-m", "vllm.entrypoints.openai.api_server", "--port", "{port}"]
max_concurrency = 32

[[backends]]
name = "paid"
kind = "openai"
url = "https://api.example.com/v1"
models = ["gpt-4o-mini"]
api_key_env = "EXAMPLE_API_KEY"
remote = true
"""
    )
    vllm, paid = load_config(path, env={}).backends
    assert (vllm.name, vllm.kind, vllm.max_concurrency, vllm.remote) == (
        "vllm-0",
        "vllm",
        32,
        False,
    )
    assert vllm.command[-1] == "{port}"
    assert (paid.name, paid.models, paid.api_key_env, paid.remote) == (
        "paid",
        ("gpt-4o-mini",),
        "EXAMPLE_API_KEY",
        True,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "tpu"\nurl = "http://x"', "backends[0].kind = 'tpu'"),
        ('kind = "vllm"', "needs the server's http:// or https:// base URL"),
        ('kind = "openai"\nurl = "http://x"\ncommand = ["x"]', "command is only for kind vllm"),
        ('kind = "embedded"\nurl = "http://x"', "takes no url or command"),
        ('kind = "openai"\nurl = "http://x"\nmodels = "m"', "expected a list of strings"),
        ('kind = "openai"\nurl = "http://x"\nport = 1', "unknown setting backends[0].port"),
        ('kind = "openai"\nurl = "http://x"\nmax_concurrency = 0', "must be between 1"),
    ],
)
def test_bad_backends_are_refused_with_the_field(tmp_path, table, message):
    path = tmp_path / "ownllm.toml"
    path.write_text(f"[[backends]]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, env={})


def test_a_backend_name_is_unique(tmp_path):
    path = tmp_path / "ownllm.toml"
    path.write_text(
        '[[backends]]\nkind = "embedded"\n[[backends]]\nkind = "embedded"\nname = "embedded-0"\n'
    )
    with pytest.raises(ConfigError, match="'embedded-0' is used twice"):
        load_config(path, env={})


def test_backend_flags_replace_the_files_backends(tmp_path):
    from ownllm.config import parse_backend_flag

    path = tmp_path / "ownllm.toml"
    path.write_text('[[backends]]\nkind = "openai"\nurl = "http://file"\n')
    flags = [parse_backend_flag("vllm=http://127.0.0.1:8100"), parse_backend_flag("embedded")]
    backends = load_config(path, env={}, overrides={"backends": flags}).backends
    assert [(b.name, b.kind, b.url) for b in backends] == [
        ("vllm-0", "vllm", "http://127.0.0.1:8100"),
        ("embedded-0", "embedded", ""),
    ]
    with pytest.raises(ConfigError, match="expected KIND=URL"):
        parse_backend_flag("tpu=http://x")
    with pytest.raises(ConfigError, match="expected KIND=URL"):
        parse_backend_flag("http://x")
