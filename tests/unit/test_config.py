"""Configuration: sources in order, validation errors that name the key."""

from pathlib import Path

import pytest

from soma.config import ConfigError, load_settings


def test_defaults_run_embedded(monkeypatch):
    monkeypatch.delenv("SOMA_SERVER__PORT", raising=False)
    settings = load_settings()
    assert settings.server.port == 50051
    assert settings.teacher.model == "qwen2.5-coder-0.5b-instruct"
    assert settings.surrogate.model == "smollm2-135m-instruct"
    assert settings.dialogue.teacher_address == ""


def test_flags_beat_env_beat_yaml(tmp_path: Path, monkeypatch):
    cfg = tmp_path / "soma.yaml"
    cfg.write_text("server:\n  port: 1111\n  host: 0.0.0.0\nteacher:\n  dtype: bfloat16\n")
    assert load_settings(cfg).server.port == 1111
    monkeypatch.setenv("SOMA_SERVER__PORT", "2222")
    settings = load_settings(cfg)
    assert settings.server.port == 2222
    assert settings.server.host == "0.0.0.0"  # the rest of the section still comes from YAML
    assert settings.teacher.dtype == "bfloat16"
    assert load_settings(cfg, {"server": {"port": 3333}}).server.port == 3333


def test_unknown_key_is_named(tmp_path: Path):
    cfg = tmp_path / "soma.yaml"
    cfg.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(cfg)


def test_bad_value_names_key_and_env(monkeypatch):
    monkeypatch.setenv("SOMA_TEACHER__DTYPE", "int3")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "teacher.dtype" in str(info.value)
    assert "SOMA_TEACHER__DTYPE" in str(info.value)


def test_yaml_problems(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(scalar)


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"SOMA_TEACHER__DEFAULT_MAX_NEW_TOKENS": "4096"}, "max_new_tokens_limit"),
        ({"SOMA_TEACHER__MAX_CONTEXT_TOKENS": "100"}, "no room for the prompt"),
        ({"SOMA_DIALOGUE__TEACHER_ADDRESS": "not an address"}, "dialogue.teacher_address"),
        ({"SOMA_SERVER__MAX_WORKERS": "8"}, "max_concurrent_turns"),
        ({"SOMA_SERVER": "notjson"}, "server"),
    ],
)
def test_inconsistent_settings_are_refused(monkeypatch, env, needle):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=needle):
        load_settings()


def test_adapter_store_settings(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("SOMA_ADAPTERS__BACKEND", "s3")
    with pytest.raises(ConfigError, match="s3_endpoint"):
        load_settings()
    monkeypatch.setenv("SOMA_ADAPTERS__S3_ENDPOINT", "minio:9000")
    monkeypatch.setenv("SOMA_ADAPTERS__S3_ACCESS_KEY", "env-key")
    monkeypatch.setenv("SOMA_ADAPTERS__S3_SECRET_KEY", "env-secret")
    settings = load_settings()
    assert settings.adapters.credentials() == ("env-key", "env-secret")
    assert "env-secret" not in repr(settings.adapters)  # the secret never shows in logs
    (tmp_path / "access_key").write_text("file-key\n")
    (tmp_path / "secret_key").write_text("file-secret\n")
    monkeypatch.setenv("SOMA_ADAPTERS__S3_CREDENTIALS_DIR", str(tmp_path))
    assert load_settings().adapters.credentials() == ("file-key", "file-secret")  # a mounted secret wins


def test_data_folders_default_to_one_state_folder(monkeypatch, tmp_path: Path):
    for key in ("SOMA_STATE_DIR", "SOMA_ADAPTERS__LOCAL_DIR", "SOMA_JOBS__LOCAL_DIR", "SOMA_DIALOGUE__SESSION_DB"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    settings = load_settings()
    state = tmp_path / "home" / ".local" / "state" / "soma"
    assert settings.state_dir == state
    assert settings.adapters.local_dir == state / "adapters"
    assert settings.jobs.local_dir == state / "jobs"
    assert settings.dialogue.session_db == state / "sessions.db"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_settings().state_dir == tmp_path / "xdg" / "soma"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/xdg")  # invalid by the XDG spec: ignored
    assert load_settings().state_dir == state
    monkeypatch.setenv("SOMA_STATE_DIR", str(tmp_path / "mine"))
    assert load_settings().adapters.local_dir == tmp_path / "mine" / "adapters"


def test_relative_data_folders_become_absolute_at_configuration_time(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOMA_ADAPTERS__LOCAL_DIR", "rel/adapters")
    monkeypatch.setenv("SOMA_STATE_DIR", "state")
    monkeypatch.setenv("SOMA_JOBS__LOCAL_DIR", "")  # empty = the default under state_dir
    settings = load_settings()
    assert settings.adapters.local_dir == tmp_path / "rel" / "adapters"
    assert settings.jobs.local_dir == tmp_path / "state" / "jobs"
    assert all(p.is_absolute() for p in settings.data_folders().values())
    monkeypatch.chdir("/")  # what was resolved stays put
    assert settings.adapters.local_dir == tmp_path / "rel" / "adapters"


def test_a_data_folder_that_cannot_be_written_is_named(monkeypatch, tmp_path: Path):
    from soma.config import ensure_data_folders

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SOMA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SOMA_ADAPTERS__LOCAL_DIR", str(blocker / "adapters"))
    settings = load_settings()
    with pytest.raises(
        ConfigError, match=r"adapters\.local_dir \(env SOMA_ADAPTERS__LOCAL_DIR\): cannot use .*a-file/adapters"
    ):
        ensure_data_folders(settings)
    monkeypatch.delenv("SOMA_ADAPTERS__LOCAL_DIR")
    ensure_data_folders(load_settings())  # the defaults under the state folder are created
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["adapters", "jobs"]


def test_moved_keys_keep_their_old_names_with_a_warning(monkeypatch, caplog):
    monkeypatch.setenv("SOMA_JOBS__BUDGET", "tiny")
    monkeypatch.setenv("SOMA_JOBS__METHOD", '{"lora.steps": 3}')
    monkeypatch.setenv("SOMA_DIALOGUE__ADAPTATION", "off")
    monkeypatch.setenv("SOMA_DIALOGUE__REWARM_TURNS", "5")
    with caplog.at_level("WARNING", logger="soma.config"):
        settings = load_settings()
    assert (settings.method.budget, settings.method.config().lora.steps) == ("tiny", 3)
    assert (settings.adaptation.mode, settings.adaptation.rewarm_turns) == ("off", 5)
    assert "SOMA_JOBS__BUDGET) is deprecated: use method.budget (env SOMA_METHOD__BUDGET)" in caplog.text
    monkeypatch.setenv("SOMA_ADAPTATION__MODE", "operator")  # the new name wins where both are set
    assert load_settings().adaptation.mode == "operator"


def test_moved_keys_work_in_yaml_too(tmp_path):
    cfg = tmp_path / "old.yaml"
    cfg.write_text("dialogue:\n  adaptation: off\n  mining_address: miner:50051\njobs:\n  budget: paper\n")
    settings = load_settings(cfg)
    assert settings.adaptation.mode == "off" and settings.adaptation.mining_address == "miner:50051"
    assert settings.method.budget == "paper"
    bad = tmp_path / "bad.yaml"
    bad.write_text("dialogue:\n  mining_address: not an address\n")
    with pytest.raises(ConfigError, match="adaptation.mining_address"):
        load_settings(bad)
