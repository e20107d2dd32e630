"""The system prompt (with the user's memory) and trimming the history to the context budget.

Token counts are estimated from characters and calibrated by the `prompt_eval_count` Ollama
reports for what was really sent, so the estimate follows the model's tokenizer over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import ollama

SYSTEM_PROMPT = """You are a coding agent with your own Linux computer (a Debian VM; user `agent`, \
home /home/agent, work in /workspace, which persists). Use the tools to act: run commands with exec, \
read and write files, list folders. Work step by step and check your results by running them. \
Install Python packages with `pip install --user` (no root, no apt-get). Start servers in the \
background and keep them running. When you produce a file the user should get, call attach_file. \
Use notify for things the user should hear about later, and remember for lasting facts about the \
user. Answer concisely in Markdown."""

ANSWER_RESERVE = 0.25  # share of num_ctx kept free for the model's answer


def system_prompt(memory: str, vm_name: str) -> str:
    text = f"{SYSTEM_PROMPT}\nYour VM: {vm_name}."
    if memory.strip():
        text += f"\n\nWhat you remember about this user:\n{memory.strip()}"
    return text


@dataclass
class TokenEstimator:
    """chars -> tokens, starting at 4 chars a token and calibrated by what Ollama reports."""

    chars_per_token: float = 4.0
    _samples: list[float] = field(default_factory=list)

    def count(self, messages: Sequence[ollama.Message]) -> int:
        chars = sum(len(m.content or "") + len(m.thinking or "") + len(str(m.tool_calls or "")) + 8
                    for m in messages)
        return int(chars / self.chars_per_token) + 1

    def calibrate(self, messages: Sequence[ollama.Message], prompt_tokens: int | None) -> None:
        if not prompt_tokens or prompt_tokens < 50:
            return
        chars = self.count(messages) * self.chars_per_token
        self._samples = (self._samples + [chars / prompt_tokens])[-20:]
        self.chars_per_token = min(8.0, max(1.5, sum(self._samples) / len(self._samples)))


def _exchanges(history: Sequence[ollama.Message]) -> list[list[ollama.Message]]:
    """Split the history at user messages: an exchange is dropped whole, so no tool result is
    left without the call that asked for it."""
    groups: list[list[ollama.Message]] = []
    for message in history:
        if message.role == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return groups


def trim_history(system: ollama.Message, history: Sequence[ollama.Message], current: Sequence[ollama.Message],
                 num_ctx: int, estimator: TokenEstimator) -> list[ollama.Message]:
    """system + as many of the newest past exchanges as fit + the current turn (always kept)."""
    budget = int(num_ctx * (1 - ANSWER_RESERVE)) - estimator.count([system, *current])
    kept: list[ollama.Message] = []
    for exchange in reversed(_exchanges(history)):
        cost = estimator.count(exchange)
        if cost > budget:
            break
        budget -= cost
        kept[:0] = exchange
    return [system, *kept, *current]
