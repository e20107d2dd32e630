"""Application commands (bulk overwrite, Discord's checks) and the INTERACTION_CREATE payloads built
from them: options are typed by the registered schema, as a Discord client would send them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .limits import invalid_form
from .payloads import (
    app_channel_payload,
    attachment_payload,
    member_payload,
    message_payload,
    role_payload,
    user_payload,
)
from .records import JSON, FakeChannel, FakeInteraction, FakeMessage, FakeRole, FakeUser, Upload
from .state import ALL_PERMISSIONS

if TYPE_CHECKING:
    from .state import FakeState

NAME = re.compile(r"^[-_\w]{1,32}$")
SUBCOMMAND, GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11


class CommandRegistry:
    """Global and per-guild commands; ids stay the same across overwrites of the same name."""

    def __init__(self, state: FakeState) -> None:
        self._state = state
        self._scopes: dict[int | None, dict[tuple[str, int], JSON]] = {}

    def overwrite(self, guild_id: int | None, commands: list[JSON]) -> list[JSON]:
        seen: set[tuple[str, int]] = set()
        for index, command in enumerate(commands):
            check_command(index, command)
            key = (command["name"], int(command.get("type", 1)))
            if key in seen:
                raise invalid_form(f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME",
                                   f"Application command names must be unique: {key[0]}")
            seen.add(key)
        old = self._scopes.get(guild_id, {})
        scope = {}
        for command in commands:
            key = (command["name"], int(command.get("type", 1)))
            previous = old.get(key)
            scope[key] = self._stored(command, guild_id, previous["id"] if previous else None)
        self._scopes[guild_id] = scope
        self._state.changed()
        return list(scope.values())

    def _stored(self, command: JSON, guild_id: int | None, command_id: str | None) -> JSON:
        stored: JSON = {
            "type": 1, "description": "", "options": [], "default_member_permissions": None, "nsfw": False,
            "name_localizations": None, "description_localizations": None, **command,
            "id": command_id or str(self._state.ids.next()), "application_id": str(self._state.application_id),
            "version": str(self._state.ids.next()),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    def all(self, guild_id: int | None) -> list[JSON]:
        return list(self._scopes.get(guild_id, {}).values())

    def get(self, guild_id: int | None, command_id: int) -> JSON | None:
        return next((c for c in self.all(guild_id) if int(c["id"]) == command_id), None)

    def find(self, name: str, guild_id: int | None) -> JSON:
        """The command a user would see by this name (guild commands first); LookupError if none."""
        scopes = ([guild_id] if guild_id is not None else []) + [None]
        for scope in scopes:
            command = self._scopes.get(scope, {}).get((name, 1))
            if command is not None and (guild_id is not None or _usable_in_dm(command)):
                return command
        where = "this guild" if guild_id is not None else "DMs"
        raise LookupError(f"no slash command /{name} is registered for {where} (did the bot sync its tree?)")


def _usable_in_dm(command: JSON) -> bool:
    contexts = command.get("contexts")
    if contexts is not None:
        return 1 in contexts
    return command.get("dm_permission", True) is not False


def check_command(index: int, command: JSON) -> None:
    name = command.get("name", "")
    chat_input = int(command.get("type", 1)) == 1
    if not NAME.match(name) or (chat_input and name != name.lower()):
        raise invalid_form(f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")
    if chat_input and not 1 <= len(command.get("description") or "") <= 100:
        raise invalid_form(f"{index}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    _check_options(f"{index}.options", command.get("options") or [])


def _check_options(path: str, options: list[JSON]) -> None:
    if len(options) > 25:
        raise invalid_form(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    optional_seen = False
    for number, option in enumerate(options):
        where = f"{path}.{number}"
        if not NAME.match(option.get("name", "")) or option["name"] != option["name"].lower():
            raise invalid_form(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Option name is invalid")
        if not 1 <= len(option.get("description") or "") <= 100:
            raise invalid_form(f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if len(option.get("choices") or []) > 25:
            raise invalid_form(f"{where}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if option.get("type") in (SUBCOMMAND, GROUP):
            _check_options(f"{where}.options", option.get("options") or [])
            continue
        if option.get("required"):
            if optional_seen:
                raise invalid_form(where, "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                                   "Required options must be placed before non-required options")
        else:
            optional_seen = True


def check_permission(state: FakeState, command: JSON, user: FakeUser) -> None:
    required = command.get("default_member_permissions")
    if required is None:
        return
    needed = int(required)
    granted = state.permissions_of(user.id)
    if granted != ALL_PERMISSIONS and (needed == 0 or granted & needed != needed):
        raise PermissionError(f"{user.name} lacks the permissions /{command['name']} asks for ({needed})")


def command_data(state: FakeState, command: JSON, path: list[str], given: dict[str, Any],
                 user: FakeUser) -> JSON:
    """``data`` of an application-command interaction: nested subcommands, typed options, resolved."""
    resolved: JSON = {}
    schema: list[JSON] = command.get("options") or []
    chain: list[JSON] = []
    for part in path:
        sub = next((o for o in schema if o["name"] == part and o.get("type") in (SUBCOMMAND, GROUP)), None)
        if sub is None:
            raise LookupError(f"/{command['name']} has no subcommand {part!r}")
        chain.append({"name": part, "type": sub["type"], "options": []})
        schema = sub.get("options") or []
    options = _options(state, schema, dict(given), resolved, user)
    if chain:
        chain[-1]["options"] = options
        for outer, inner in zip(reversed(chain[:-1]), reversed(chain[1:])):
            outer["options"] = [inner]
        options = [chain[0]]
    data: JSON = {"id": command["id"], "name": command["name"], "type": 1, "options": options}
    if resolved:
        data["resolved"] = resolved
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    return data


def _options(state: FakeState, schema: list[JSON], given: dict[str, Any], resolved: JSON,
             user: FakeUser) -> list[JSON]:
    result = []
    for option in schema:
        name = option["name"]
        if name not in given:
            if option.get("required"):
                raise ValueError(f"option {name!r} is required")
            continue
        value = _typed(state, option, given.pop(name), resolved, user)
        result.append({"name": name, "type": option["type"], "value": value})
    if given:
        raise ValueError(f"unknown options {sorted(given)}; the command has {[o['name'] for o in schema]}")
    return result


def _typed(state: FakeState, option: JSON, value: Any, resolved: JSON, user: FakeUser) -> Any:
    kind = option["type"]
    if kind in (STRING, INTEGER, NUMBER, BOOLEAN):
        value = {STRING: str, INTEGER: int, NUMBER: float, BOOLEAN: bool}[kind](value)
        choices = [c["value"] for c in option.get("choices") or []]
        if choices and value not in choices:
            raise ValueError(f"{value!r} is not one of the choices {choices} of {option['name']!r}")
        return value
    if kind == ATTACHMENT:
        upload = value if isinstance(value, Upload) else Upload(value[0], value[1])
        att = state.store_file(upload, folder=f"ephemeral-attachments/{state.application_id}", ephemeral=True)
        resolved.setdefault("attachments", {})[str(att.id)] = attachment_payload(att)
        return str(att.id)
    if isinstance(value, FakeUser) and kind in (USER, MENTIONABLE):
        resolved.setdefault("users", {})[str(value.id)] = user_payload(value)
        if value.id in state.member_roles:
            member = member_payload(state, value, with_user=False, permissions=True)
            resolved.setdefault("members", {})[str(value.id)] = member
        return str(value.id)
    if isinstance(value, FakeRole) and kind in (ROLE, MENTIONABLE):
        resolved.setdefault("roles", {})[str(value.id)] = role_payload(value)
        return str(value.id)
    if isinstance(value, FakeChannel) and kind == CHANNEL:
        resolved.setdefault("channels", {})[str(value.id)] = app_channel_payload(state, value, user.id)
        return str(value.id)
    raise TypeError(f"option {option['name']!r} (type {kind}) cannot take {value!r}")


def interaction_payload(state: FakeState, inter: FakeInteraction, data: JSON,
                        message: FakeMessage | None = None) -> JSON:
    """INTERACTION_CREATE's d for a command (type 2) or a component (type 3)."""
    user = state.users[inter.user_id]
    channel = state.channels[inter.channel_id]
    payload: JSON = {
        "id": str(inter.id), "application_id": str(state.application_id), "type": inter.type,
        "token": inter.token, "version": 1, "data": data, "channel_id": str(channel.id),
        "channel": app_channel_payload(state, channel, user.id), "locale": "en-US",
        "app_permissions": str(ALL_PERMISSIONS), "entitlements": [], "attachment_size_limit": state.upload_limit,
    }
    if channel.guild_id is not None:
        payload.update(guild_id=str(channel.guild_id), guild_locale="en-US", context=0,
                       guild={"id": str(channel.guild_id), "locale": "en-US", "features": []},
                       member=member_payload(state, user, permissions=True),
                       authorizing_integration_owners={"0": str(channel.guild_id)})
    else:
        payload.update(user=user_payload(user), context=1, authorizing_integration_owners={"1": str(user.id)})
    if message is not None:
        payload["message"] = message_payload(state, message)
    return payload
