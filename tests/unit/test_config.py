"""bot/config.py: settings from the environment and .env, validated once, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Settings, load_settings, parse_size
from bot.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the developer's shell leaks into these tests."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults() -> None:
    settings = load_settings(_env_file=None)
    assert settings.discord_token == ""
    assert settings.allowed_guild_ids == [] and settings.admin_user_ids == [] and not settings.has_allow_list
    assert settings.vm_scope == "user"
    assert settings.vm_memory == 1024**3
    assert settings.exec_output_cap == 64 * 1024 and settings.file_read_cap == 8 * 1024**2
    assert settings.ollama_host == "http://localhost:11434" and settings.ollama_think is False
    assert settings.vm_desktop is True and settings.app_name == "agentbot"
    assert settings.database_path == Path("data") / "bot.sqlite3"
    assert (settings.agent_image_dir / "Dockerfile").is_file()


def test_comma_separated_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_USER_IDS", "123, 456,789")
    monkeypatch.setenv("ALLOWED_GUILD_IDS", "42")
    monkeypatch.setenv("ALLOWED_ROLE_IDS", " 7 , ,8, ")
    monkeypatch.setenv("ALLOWED_USER_IDS", "")
    settings = load_settings(_env_file=None)
    assert settings.admin_user_ids == [123, 456, 789]
    assert settings.allowed_guild_ids == [42]
    assert settings.allowed_role_ids == [7, 8]
    assert settings.allowed_user_ids == []
    assert settings.has_allow_list


@pytest.mark.parametrize(("text", "size"), [
    ("512m", 512 * 1024**2), ("1g", 1024**3), ("1G", 1024**3), ("64k", 65536), ("65536", 65536),
    ("2gb", 2 * 1024**3), ("1GiB", 1024**3), (" 256M ", 256 * 1024**2), ("100b", 100),
])
def test_sizes(text: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size(text) == size
    monkeypatch.setenv("VM_MEMORY", text)
    assert load_settings(_env_file=None).vm_memory == size


def test_sizes_given_as_overrides() -> None:
    settings = load_settings(_env_file=None, vm_memory="512m", exec_output_cap=1000)
    assert settings.vm_memory == 512 * 1024**2 and settings.exec_output_cap == 1000


@pytest.mark.parametrize(("variable", "value"), [
    ("VM_SCOPE", "galaxy"), ("VM_MEMORY", "lots"), ("VM_MEMORY", "1t"), ("MAX_STEPS", "0"),
    ("ADMIN_USER_IDS", "12,abc"), ("APP_NAME", "Has Spaces"), ("VM_DESKTOP", "maybe"),
    ("LOG_LEVEL", "LOUD"), ("OLLAMA_NUM_CTX", "100"),
])
def test_a_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    assert variable in error.value.message
    assert repr(value) in error.value.message or value.split(",")[-1] in error.value.message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VM_SCOPE", "galaxy")
    monkeypatch.setenv("VM_MEMORY", "lots")
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None)
    assert "VM_SCOPE" in error.value.message and "VM_MEMORY" in error.value.message
    assert "512m" in error.value.message  # the size error says what a size looks like


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# the bot's settings\nDISCORD_TOKEN=abc.def\nVM_SCOPE=thread\nVM_MEMORY=512m\n"
                        "ADMIN_USER_IDS=1,2\nVM_DESKTOP=false\nUNRELATED_THING=ignored\n", encoding="utf-8")
    settings = load_settings(_env_file=env_file)
    assert settings.discord_token == "abc.def"
    assert settings.vm_scope == "thread"
    assert settings.vm_memory == 512 * 1024**2
    assert settings.admin_user_ids == [1, 2]
    assert settings.vm_desktop is False

    monkeypatch.setenv("VM_SCOPE", "user")  # the environment wins over the file
    assert load_settings(_env_file=env_file).vm_scope == "user"


def test_a_bad_value_in_the_dotenv_file_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VM_SCOPE=everyone\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="VM_SCOPE"):
        load_settings(_env_file=env_file)


def test_overrides_win_and_paths_follow_data_dir(tmp_path: Path) -> None:
    settings = load_settings(_env_file=None, data_dir=tmp_path / "d", vm_scope="thread")
    assert settings.vm_scope == "thread"
    assert settings.database_path == tmp_path / "d" / "bot.sqlite3"
