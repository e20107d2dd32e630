"""Talking to Ollama: one streamed chat call with retries, and its errors as one clear sentence.

Transient failures (connection refused, 5xx) are retried with backoff, but only while nothing of
the answer has arrived: a retry after partial output would show the user the answer twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import pydantic

from bot.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    host: str
    model: str
    num_ctx: int
    think: bool
    timeout_s: float
    retries: int = 3
    backoff_s: float = 0.5


class TransientModelError(ModelError):
    """Worth another try: Ollama unreachable or a 5xx before any chunk arrived."""


def translate(exc: BaseException, config: ModelConfig) -> ModelError:
    """Any error of the ollama client -> a ModelError whose message tells the user what to do."""
    model, host = config.model, config.host
    if isinstance(exc, ModelError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        text = exc.error or str(exc)
        if exc.status_code == 404 and "not found" in text:
            return ModelError(f"The model {model} is not available in Ollama: run `ollama pull {model}` "
                              "on the Ollama host, or set OLLAMA_MODEL to one it has.")
        if "does not support tools" in text:
            return ModelError(f"The model {model} does not support tools, which the agent needs: set "
                              "OLLAMA_MODEL to a tool-capable model (e.g. qwen3).")
        if "does not support thinking" in text:
            return ModelError(f"The model {model} does not support thinking: set OLLAMA_THINK=false.")
        if exc.status_code == -1:
            return ModelError(f"Ollama failed in the middle of the answer ({text}); what arrived so far "
                              "was kept. Try again.")
        if exc.status_code >= 500:
            return TransientModelError(f"Ollama answered with an error ({exc.status_code}: {text}).")
        return ModelError(f"Ollama refused the request ({exc.status_code}: {text}).")
    if isinstance(exc, httpx.TimeoutException):
        return ModelError(f"Ollama at {host} did not answer within {config.timeout_s:g} s; "
                          "it may be overloaded. Try again later.")
    if isinstance(exc, (ConnectionError, httpx.ConnectError)):
        return TransientModelError(f"Ollama at {host} is not reachable: is it running, and is "
                                   "OLLAMA_HOST right?")
    if isinstance(exc, (json.JSONDecodeError, pydantic.ValidationError)):
        return ModelError("Ollama sent a reply that could not be read; what arrived so far was kept. "
                          "Try again.")
    if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
        return ModelError(f"The connection to Ollama at {host} broke during the answer ({exc!r}); "
                          "what arrived so far was kept.")
    return ModelError(f"Ollama failed unexpectedly: {exc!r}")


async def stream_chat(client: ollama.AsyncClient, config: ModelConfig, messages: Sequence[ollama.Message],
                      tools: Sequence[Mapping[str, Any]]) -> AsyncIterator[ollama.ChatResponse]:
    """Yield the chunks of one streamed chat call, retrying transient failures before the first."""
    attempt = 0
    while True:
        received = False
        try:
            stream = await client.chat(
                model=config.model, messages=messages, tools=tools, stream=True,
                think=config.think or None, options={"num_ctx": config.num_ctx})
            async for chunk in stream:
                received = True
                yield chunk
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # translated right here, where the client's errors are caught
            error = translate(exc, config)
            attempt += 1
            if received or not isinstance(error, TransientModelError) or attempt >= config.retries:
                raise (ModelError(error.message) if isinstance(error, TransientModelError) else error) from exc
            delay = config.backoff_s * 2 ** (attempt - 1)
            log.warning("%s (attempt %d of %d, retrying in %.1f s)", error, attempt, config.retries, delay)
            await asyncio.sleep(delay)
