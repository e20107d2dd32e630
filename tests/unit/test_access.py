"""bot/access.py: who may use the bot (allow-lists of guilds, roles, users; admins always)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bot.access import AccessPolicy, Caller
from bot.config import load_settings
from bot.errors import AccessDenied

ADMIN, ALICE, BOB = 1, 2, 3
GUILD, OTHER_GUILD = 100, 200
DEV_ROLE, OTHER_ROLE = 10, 11


def policy(**lists: Any) -> AccessPolicy:
    return AccessPolicy(load_settings(_env_file=None, admin_user_ids=[ADMIN], **lists))


def refusal(access: AccessPolicy, caller: Caller) -> str:
    with pytest.raises(AccessDenied) as refused:
        access.check(caller)
    return refused.value.message


@pytest.mark.parametrize("lists", [
    {}, {"allowed_user_ids": [ALICE]}, {"allowed_role_ids": [DEV_ROLE]}, {"allowed_guild_ids": [GUILD]},
    {"allowed_guild_ids": [GUILD], "allowed_role_ids": [DEV_ROLE]},
])
def test_admins_always_pass(lists: dict[str, Any]) -> None:
    access = policy(**lists)
    for guild in (GUILD, OTHER_GUILD, None):
        assert access.allowed(Caller(ADMIN, guild))
        access.check(Caller(ADMIN, guild))
    assert access.is_admin(ADMIN) and not access.is_admin(ALICE)


def test_extra_admins_are_admins() -> None:
    access = AccessPolicy(load_settings(_env_file=None), extra_admins=[BOB])  # e.g. the application owner
    assert access.is_admin(BOB) and access.allowed(Caller(BOB, GUILD))
    assert not access.allowed(Caller(ALICE, GUILD))


def test_user_allow_list() -> None:
    access = policy(allowed_user_ids=[ALICE])
    assert access.allowed(Caller(ALICE, GUILD))
    assert access.allowed(Caller(ALICE, None))  # in DMs too
    assert not access.allowed(Caller(BOB, GUILD))
    assert "allow-list" in refusal(access, Caller(BOB, GUILD))


def test_role_allow_list() -> None:
    access = policy(allowed_role_ids=[DEV_ROLE])
    assert access.allowed(Caller(BOB, GUILD, frozenset({OTHER_ROLE, DEV_ROLE})))
    assert access.allowed(Caller(BOB, OTHER_GUILD, frozenset({DEV_ROLE})))  # no guild list: any guild
    assert not access.allowed(Caller(BOB, GUILD, frozenset({OTHER_ROLE})))
    assert not access.allowed(Caller(BOB, GUILD))
    assert not access.allowed(Caller(BOB, None))  # a DM carries no roles


def test_a_guild_listed_alone_admits_its_members() -> None:
    access = policy(allowed_guild_ids=[GUILD])
    assert access.allowed(Caller(ALICE, GUILD))
    assert access.allowed(Caller(BOB, GUILD, frozenset({OTHER_ROLE})))
    assert not access.allowed(Caller(ALICE, OTHER_GUILD))
    assert not access.allowed(Caller(ALICE, None))  # membership cannot be seen in a DM
    assert "allow-list" in refusal(access, Caller(ALICE, OTHER_GUILD))


def test_guild_and_roles_require_both() -> None:
    access = policy(allowed_guild_ids=[GUILD], allowed_role_ids=[DEV_ROLE])
    assert access.allowed(Caller(BOB, GUILD, frozenset({DEV_ROLE})))
    assert not access.allowed(Caller(BOB, GUILD))  # a member without the role
    assert not access.allowed(Caller(BOB, GUILD, frozenset({OTHER_ROLE})))
    assert not access.allowed(Caller(BOB, OTHER_GUILD, frozenset({DEV_ROLE})))  # the role, elsewhere


def test_a_user_allowed_in_one_guild_is_refused_in_a_guild_not_listed() -> None:
    access = policy(allowed_guild_ids=[GUILD], allowed_user_ids=[ALICE])
    assert access.allowed(Caller(ALICE, GUILD))
    assert not access.allowed(Caller(ALICE, OTHER_GUILD))
    assert not access.allowed(Caller(BOB, GUILD))  # users listed: the guild alone no longer admits
    message = refusal(access, Caller(ALICE, OTHER_GUILD))
    assert "not allowed" in message and "only its admins" not in message


def test_no_allow_list_admits_only_admins_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bot.access"):
        access = policy()
    assert any("only admins may use the bot" in r.getMessage() for r in caplog.records)
    for caller in (Caller(ALICE, GUILD), Caller(ALICE, None), Caller(BOB, OTHER_GUILD, frozenset({DEV_ROLE}))):
        assert not access.allowed(caller)
        message = refusal(access, caller)
        assert "only its admins" in message and "ALLOWED_USER_IDS" in message
    assert access.allowed(Caller(ADMIN, GUILD))
