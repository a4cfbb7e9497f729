"""The exception tree. Every error runcomfy_nb raises is a `RunComfyError`:

    RunComfyError
    ├── MissingCredentials      no token / API key configured (also a ConfigError)
    ├── ConfigError             a setting is invalid
    ├── ValidationError         a workflow, override or input is wrong; raised before any request
    ├── APIError                the server said no (`.status`, `.code`, `.message`)
    │   ├── AuthError           401 / 403: token missing, wrong or not yours
    │   ├── PaymentRequired     402 or insufficient funds: top up the balance
    │   │   └── SubscriptionInactive  Comfy Cloud's 429: no active subscription (never retried)
    │   ├── RateLimited         429: `.retry_after` seconds, after the retry budget was spent
    │   ├── NotFound            404: unknown deployment, request or file
    │   ├── BadRequest          400 / 422: the server's own message says what is wrong
    │   ├── ServerError         5xx: the service failed; idempotent calls were retried already
    │   └── UnexpectedReply     the reply broke the protocol: not JSON, a field missing or of a wrong shape
    ├── MachineFailed           a machine failed or stopped while waited for (wait_ready)
    ├── TransportError          the network failed (connection refused, dropped, truncated download)
    │   └── SubmitUncertain     a paid submit may have reached the server; it was not resent
    └── JobError                a job ended without a result (`.job_id`)
        ├── JobFailed           the run failed: `.message` is the server's error text
        │   └── ContactLost     the server stopped answering; the run may go on there
        ├── JobCancelled        the run was cancelled
        └── JobTimeout          a job, or a wait for a machine, took longer than asked (also a TimeoutError)

An API error may arrive as HTTP 200 with an `error_code` body; it maps to the same classes.
No message carries a token, an API key or a machine URL.
"""

from __future__ import annotations

from typing import Any


class RunComfyError(Exception):
    """Base of every runcomfy_nb error."""


class ConfigError(RunComfyError, ValueError):
    pass


class MissingCredentials(ConfigError):
    pass


class ValidationError(RunComfyError, ValueError):
    pass


class APIError(RunComfyError):
    def __init__(
        self, message: str, *, status: int | None = None, code: int | str | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail


class AuthError(APIError):
    pass


class PaymentRequired(APIError):
    pass


class SubscriptionInactive(PaymentRequired):
    pass


class RateLimited(APIError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class NotFound(APIError):
    pass


class BadRequest(APIError):
    pass


class ServerError(APIError):
    pass


class UnexpectedReply(APIError):
    """The server answered, but not in the documented shape; nothing can be read from it."""


class MachineFailed(RunComfyError):
    """A machine failed, or was stopped, while it was being waited for."""


class TransportError(RunComfyError):
    pass


class SubmitUncertain(TransportError):
    pass


class JobError(RunComfyError):
    def __init__(self, message: str, *, job_id: str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.detail = detail


class JobFailed(JobError):
    pass


class ContactLost(JobFailed):
    """No answer from the server for longer than the contact timeout: the job is given up here,
    though it may still run (and bill) there."""


class JobCancelled(JobError):
    pass


class JobTimeout(JobError, TimeoutError):
    pass


def transient(exc: BaseException) -> bool:
    """True for an error that says nothing about the job itself — the network failed, the server
    answered 5xx or 429, an error body came in a 2xx reply, or the reply could not be read
    (UnexpectedReply) — so a poll or a cancel that met it is tried again (within the job's contact
    timeout) instead of ending the job."""
    if isinstance(exc, SubmitUncertain):
        return False
    if isinstance(exc, (TransportError, ServerError, RateLimited, UnexpectedReply)):
        return True
    return type(exc) is APIError and exc.status is not None and exc.status < 400
