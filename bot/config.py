"""Settings from the environment and `.env`, validated once at start.

Every field is an environment variable of the same name in upper case (`vm_scope` -> `VM_SCOPE`).
Lists are comma separated (`ADMIN_USER_IDS=123,456`). `load_settings()` turns pydantic's
validation errors into one `ConfigError` naming each bad variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError

IdList = Annotated[list[int], NoDecode]

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: str | int) -> int:
    """'512m', '1g', '65536' -> bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([bkmg]?)i?b?\s*", value.lower())
    if not match:
        raise ValueError(f"{value!r} is not a size such as 512m, 1g or 65536")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Discord
    discord_token: str = ""
    sync_guild_ids: IdList = Field(default_factory=list)
    allowed_guild_ids: IdList = Field(default_factory=list)
    allowed_role_ids: IdList = Field(default_factory=list)
    allowed_user_ids: IdList = Field(default_factory=list)
    admin_user_ids: IdList = Field(default_factory=list)
    private_threads: bool = False

    # Ollama
    ollama_host: str = "http://localhost:11434"
    ollama_model: str = "qwen3:4b"
    ollama_num_ctx: int = Field(default=8192, ge=512)
    ollama_think: bool = False
    ollama_timeout: float = Field(default=300.0, gt=0)
    max_steps: int = Field(default=20, ge=1, le=200)

    # VMs
    app_name: str = Field(default="agentbot", pattern=r"^[a-z0-9][a-z0-9_.-]{0,40}$")
    vm_image: str = "agentbot-vm:latest"
    vm_scope: Literal["user", "thread"] = "user"
    vm_memory: Annotated[int, NoDecode] = parse_size("1g")
    vm_cpus: float = Field(default=1.0, gt=0)
    vm_pids_limit: int = Field(default=256, ge=32)
    vm_network: str = "bot"  # "bot" = a network of the bot's own; "none" = no network at all
    vm_desktop: bool = True
    vm_idle_timeout: float = Field(default=1800.0, ge=0)  # seconds; 0 disables the reaper
    exec_timeout: float = Field(default=120.0, gt=0)
    exec_output_cap: Annotated[int, NoDecode] = parse_size("64k")
    file_read_cap: Annotated[int, NoDecode] = parse_size("8m")
    agent_image_dir: Path = Path(__file__).resolve().parent.parent / "agent_image"
    base_image: str = "debian:bookworm-slim"
    extra_packages: str = ""

    # Storage and logging
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("sync_guild_ids", "allowed_guild_ids", "allowed_role_ids", "allowed_user_ids",
                     "admin_user_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("vm_memory", "exec_output_cap", "file_read_cap", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, (str, int)) else value

    @property
    def database_path(self) -> Path:
        return self.data_dir / "bot.sqlite3"

    @property
    def has_allow_list(self) -> bool:
        return bool(self.allowed_guild_ids or self.allowed_role_ids or self.allowed_user_ids)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise ConfigError naming every bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigError("Invalid configuration: " + "; ".join(problems)) from exc
