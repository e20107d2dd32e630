"""Discord's checks and rate limits, answered with Discord's own status codes and JSON error bodies.

Rate limits follow Discord's model: every route has a bucket whose state the X-RateLimit-* headers
describe honestly (so discord.py paces itself), and message writes (creates and edits, through the
channel or through interaction webhooks) also draw on a per-channel budget that the headers do not
show (X-RateLimit-Scope: shared, code 20028), like Discord's channel write limit. Fixed windows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .records import JSON, Upload

MAX_CONTENT = 2000
MAX_FILES = 10
MAX_EMBEDS = 10
EMBED_TOTAL = 6000
EMBED_LIMITS = {"title": 256, "description": 4096}
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
VIA = "1.1 google"  # discord.py treats a 429 without Via as a Cloudflare ban


class ApiError(Exception):
    """An error answer: HTTP status plus Discord's ``{"code", "message"[, "errors"]}`` body."""

    def __init__(self, status: int, code: int, message: str, *, errors: JSON | None = None,
                 extra: JSON | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> JSON:
        data: JSON = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        data.update(self.extra)
        return data


def unauthorized() -> ApiError:
    return ApiError(401, 0, "401: Unauthorized")


def not_found() -> ApiError:
    return ApiError(404, 0, "404: Not Found")


def unknown_channel() -> ApiError:
    return ApiError(404, 10003, "Unknown Channel")


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


def unknown_user() -> ApiError:
    return ApiError(404, 10013, "Unknown User")


def unknown_member() -> ApiError:
    return ApiError(404, 10007, "Unknown Member")


def unknown_webhook() -> ApiError:
    return ApiError(404, 10015, "Unknown Webhook")


def unknown_command() -> ApiError:
    return ApiError(404, 10063, "Unknown application command")


def unknown_interaction() -> ApiError:
    return ApiError(404, 10062, "Unknown interaction")


def already_acknowledged() -> ApiError:
    return ApiError(400, 40060, "Interaction has already been acknowledged.")


def invalid_webhook_token() -> ApiError:
    return ApiError(401, 50027, "Invalid Webhook Token")


def cannot_dm() -> ApiError:
    return ApiError(403, 50007, "Cannot send messages to this user")


def cannot_edit_other() -> ApiError:
    return ApiError(403, 50005, "Cannot edit a message authored by another user")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


def empty_message() -> ApiError:
    return ApiError(400, 50006, "Cannot send an empty message")


def too_many_files() -> ApiError:
    return ApiError(400, 30015, "Maximum number of attachments in a message reached (10)")


def too_large() -> ApiError:
    return ApiError(413, 40005, "Request entity too large")


def invalid_form(path: str, code: str, message: str) -> ApiError:
    """400 50035 with Discord's nested ``errors`` object (``embeds.0.description`` -> nested)."""
    errors: JSON = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".") if path else []):
        errors = {part: errors}
    return ApiError(400, 50035, "Invalid Form Body", errors=errors)


def check_message(body: JSON, files: list[Upload], *, upload_limit: int, creating: bool,
                  kept_attachments: int = 0) -> None:
    """Raise the ApiError Discord would answer for this message body, if any."""
    content = body.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        raise invalid_form("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
    check_embeds(body.get("embeds") or [])
    if len(files) + kept_attachments > MAX_FILES:
        raise too_many_files()
    for upload in files:
        if len(upload.data) > upload_limit:
            raise too_large()
    if creating and not (content or body.get("embeds") or files or body.get("components")
                         or body.get("sticker_ids") or body.get("poll")):
        raise empty_message()


def check_embeds(embeds: list[JSON]) -> None:
    if len(embeds) > MAX_EMBEDS:
        raise invalid_form("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    total = 0
    for index, embed in enumerate(embeds):
        for key, limit in EMBED_LIMITS.items():
            size = len(embed.get(key) or "")
            total += size
            if size > limit:
                raise invalid_form(f"embeds.{index}.{key}", "BASE_TYPE_MAX_LENGTH",
                                   f"Must be {limit} or fewer in length.")
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise invalid_form(f"embeds.{index}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        for number, item in enumerate(fields):
            for key, limit in (("name", 256), ("value", 1024)):
                size = len(item.get(key) or "")
                total += size
                if size > limit:
                    raise invalid_form(f"embeds.{index}.fields.{number}.{key}", "BASE_TYPE_MAX_LENGTH",
                                       f"Must be {limit} or fewer in length.")
        total += len((embed.get("footer") or {}).get("text") or "")
        total += len((embed.get("author") or {}).get("name") or "")
    if total > EMBED_TOTAL:
        raise invalid_form("embeds", "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBED_TOTAL}")


@dataclass
class Window:
    """A fixed-window budget: ``limit`` hits per ``period`` seconds from the first hit of a window."""

    limit: int
    period: float
    count: int = 0
    started: float = 0.0

    def _roll(self, now: float) -> None:
        if now - self.started >= self.period:
            self.count, self.started = 0, now

    def reset_after(self, now: float) -> float:
        return max(0.0, self.started + self.period - now)

    def try_take(self, now: float) -> bool:
        self._roll(now)
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def give_back(self) -> None:
        self.count = max(0, self.count - 1)

    def remaining(self) -> int:
        return max(0, self.limit - self.count)


@dataclass
class RateLimiter:
    """Route buckets (announced in headers) plus the hidden per-channel write budget."""

    write_limit: int = 5
    write_period: float = 5.0
    route_limit: int = 50
    route_period: float = 1.0
    hits: list[tuple[str, str]] = field(default_factory=list)  # (scope, bucket) of every 429
    _routes: dict[tuple[str, str], Window] = field(default_factory=dict)
    _channels: dict[int, Window] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.hits)

    def take_route(self, bucket: str, major: str, *, write: bool) -> dict[str, str]:
        """Take one request from a route bucket; returns the X-RateLimit-* headers, or raises 429."""
        key = (bucket, major)
        window = self._routes.get(key)
        if window is None:
            limit, period = (self.write_limit, self.write_period) if write else (self.route_limit, self.route_period)
            window = self._routes[key] = Window(limit, period)
        now = time.monotonic()
        if not window.try_take(now):
            raise self._too_many("user", bucket, window.reset_after(now))
        return self.headers(bucket, major)

    def give_back_route(self, bucket: str, major: str) -> None:
        window = self._routes.get((bucket, major))
        if window is not None:
            window.give_back()

    def headers(self, bucket: str, major: str) -> dict[str, str]:
        window = self._routes[(bucket, major)]
        reset_after = window.reset_after(time.monotonic())
        return {
            "X-RateLimit-Limit": str(window.limit),
            "X-RateLimit-Remaining": str(window.remaining()),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket,
        }

    def take_channel_write(self, channel_id: int) -> None:
        """One message create or edit in this channel; 429 (shared, code 20028) past the budget."""
        window = self._channels.setdefault(channel_id, Window(self.write_limit, self.write_period))
        now = time.monotonic()
        if not window.try_take(now):
            raise self._too_many("shared", f"channel-write:{channel_id}", window.reset_after(now))

    def _too_many(self, scope: str, bucket: str, retry_after: float) -> ApiError:
        self.hits.append((scope, bucket))
        retry_after = round(max(retry_after, 0.001), 3)
        shared = scope == "shared"
        code = 20028 if shared else 0
        message = ("The write action you are performing on the channel has hit the write rate limit."
                   if shared else "You are being rate limited.")
        headers = {"Retry-After": str(max(1, round(retry_after))), "X-RateLimit-Scope": scope,
                   "X-RateLimit-Global": "false", "Via": VIA}
        extra: dict[str, Any] = {"retry_after": retry_after, "global": False}
        return ApiError(429, code, message, extra=extra, headers=headers)
