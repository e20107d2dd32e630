"""Who may use the bot: allow-lists of guilds, roles and users, plus admins.

The bot hands out shells, so with no allow-list configured only admins may use it. Admins pass
every check and see everyone's tasks and VMs in /status. Knows nothing of Discord: the cogs pass
plain ids.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from bot.config import Settings
from bot.errors import AccessDenied

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    user_id: int
    guild_id: int | None  # None in DMs
    role_ids: frozenset[int] = frozenset()


class AccessPolicy:
    def __init__(self, settings: Settings, extra_admins: Collection[int] = ()) -> None:
        self.admins = frozenset(settings.admin_user_ids) | frozenset(extra_admins)
        self.guilds = frozenset(settings.allowed_guild_ids)
        self.roles = frozenset(settings.allowed_role_ids)
        self.users = frozenset(settings.allowed_user_ids)
        if not (self.guilds or self.roles or self.users):
            log.warning("no allow-list configured (ALLOWED_GUILD_IDS, ALLOWED_ROLE_IDS, ALLOWED_USER_IDS): "
                        "only admins may use the bot")

    def is_admin(self, user_id: int) -> bool:
        return user_id in self.admins

    def allowed(self, caller: Caller) -> bool:
        """Admins always; else the user is listed, or has a listed role, in an allowed guild (when
        guilds are listed). A guild listed alone admits all its members."""
        if self.is_admin(caller.user_id):
            return True
        if caller.guild_id is not None and self.guilds and caller.guild_id not in self.guilds:
            return False
        if caller.user_id in self.users or caller.role_ids & self.roles:
            return True
        return bool(self.guilds) and caller.guild_id in self.guilds and not (self.users or self.roles)

    def check(self, caller: Caller) -> None:
        if self.allowed(caller):
            return
        if not (self.guilds or self.roles or self.users):
            raise AccessDenied("This bot is not open to anyone yet: only its admins may use it. Ask an "
                               "admin to add you (ALLOWED_USER_IDS or ALLOWED_ROLE_IDS).")
        raise AccessDenied("You are not allowed to use this bot here. Ask an admin to add you or one of "
                           "your roles to its allow-list.")
