"""The LLM adapter: the openai SDK against OpenAI or any OpenAI-compatible chat-completions server.

`OpenAILLMClient` implements the `LLMClient` port. Every failure (connection, timeout, 429, 5xx,
4xx, a reply of the wrong shape, an empty or cut-off reply) becomes one `LLMUnavailable` whose
reason is fixed text: never the key, the prompt or the server's body.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import httpx
import openai
from pydantic import SecretStr

from bot.domain.retry import parse_retry_after
from bot.domain.tokens import token_estimate
from bot.errors import LLMUnavailable
from integrations.http import RetryPolicy, Transient, call_with_policy

__all__ = ["LLMUnavailable", "OpenAILLMClient", "token_estimate"]

log = logging.getLogger("bot.llm")

#: Two tries with short waits: a reply is only worth having within the caller's deadline.
LLM_POLICY = RetryPolicy(max_attempts=2, backoff_base=0.25, backoff_max=1.0, max_retry_after=2.0)


class OpenAILLMClient:
    """`LLMClient` over `openai.AsyncOpenAI` (`base_url` for OpenAI-compatible servers)."""

    def __init__(
        self,
        api_key: SecretStr | str,
        *,
        base_url: str | None,
        model: str,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self.model = model
        self._owns_http = http_client is None
        # Retries follow the shared policy (integrations/http.py), so the SDK's own is off.
        self.policy = policy or LLM_POLICY
        self._client = openai.AsyncOpenAI(
            api_key=key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            # openai>=3 types this as an httpx2 client but accepts an httpx one at run time;
            # openai 1.x types it as httpx. Any keeps both type-correct.
            http_client=cast(Any, http_client),
        )

    def __repr__(self) -> str:
        return f"OpenAILLMClient(model={self.model!r}, base_url={str(self._client.base_url)!r})"

    # ASYNC109: the port's per-request timeout (see LLMClient).
    async def complete(
        self,
        *,
        system: str,
        user: str,
        max_tokens: int,
        timeout: float,  # noqa: ASYNC109
    ) -> str:
        """The model's reply to one system + user message; raises `LLMUnavailable` on failure.

        Connection errors, timeouts, 429 and 5xx are retried under the shared policy (with
        `Retry-After`), all within `timeout` seconds."""

        async def attempt() -> Any:
            try:
                return await self._client.chat.completions.create(
                    model=self.model,
                    messages=[
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    temperature=0.2,
                    max_tokens=max_tokens,
                    timeout=timeout,
                )
            except openai.APITimeoutError:
                raise Transient("timed out") from None
            except openai.APIConnectionError:
                raise Transient("could not connect") from None
            except openai.RateLimitError as exc:
                raise Transient("rate limited", retry_after=_hint(exc)) from None
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:
                    raise Transient(
                        f"server error {exc.status_code}", retry_after=_hint(exc)
                    ) from None
                raise

        try:
            response = await call_with_policy(
                attempt, policy=self.policy, label="llm", deadline=timeout
            )
        except Transient as exc:
            raise LLMUnavailable(exc.reason) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise LLMUnavailable(f"the server refused the API key ({exc.status_code})") from None
        except openai.APIStatusError as exc:
            raise LLMUnavailable(f"request rejected {exc.status_code}") from None
        except (openai.APIResponseValidationError, ValueError, TypeError):
            # ValueError covers a 200 whose body is not JSON (json.JSONDecodeError).
            raise LLMUnavailable("unreadable reply") from None
        except (openai.OpenAIError, httpx.HTTPError) as exc:
            raise LLMUnavailable(f"{type(exc).__name__}") from None
        return _reply_text(response)

    async def aclose(self) -> None:
        """Close the HTTP client if this adapter created it."""
        if self._owns_http:
            await self._client.close()


def _hint(exc: openai.APIStatusError) -> float | None:
    """`Retry-After` of an error response, if the server sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return parse_retry_after(headers) if headers is not None else None


def _reply_text(response: Any) -> str:
    """The first choice's text, checked for shape; raises `LLMUnavailable` otherwise."""
    try:
        choice = response.choices[0]
        content = choice.message.content
        finish = choice.finish_reason
    except (AttributeError, IndexError, TypeError, KeyError):
        raise LLMUnavailable("unreadable reply") from None
    if not isinstance(content, str) or not content.strip():
        raise LLMUnavailable("empty reply")
    if finish == "length":
        # A reply cut off mid-sentence is not worth showing next to the complete standard text.
        raise LLMUnavailable("reply cut off")
    if finish == "content_filter":
        raise LLMUnavailable("reply filtered")
    usage = getattr(response, "usage", None)
    if usage is not None:
        log.debug(
            "llm usage: prompt_tokens=%s completion_tokens=%s",
            getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None),
        )  # fmt: skip
    return content
