"""Server interceptors: request logging, metrics, error mapping, deadlines, authentication
and authorisation.

``intercept_service`` runs on the server's polling thread, so it only wraps the
handler; each interceptor's ``guard`` runs around the behaviour on the worker thread.
The interceptors of one RPC share a :class:`Call` record, and servicers read the
authenticated actor from it with :func:`actor_of` (not from contextvars, which do not
reliably reach sync handlers from ``intercept_service``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from ledger.api import authz
from ledger.api.errors import ApiError, DeadlineExceeded, Unauthenticated, to_grpc_status
from ledger.api.principals import Principal, PrincipalStore
from ledger.application.app import Actor
from ledger.domain.errors import InvalidArgument, LedgerError, PermissionDenied, RuleViolation
from ledger.metrics import Metrics

Behaviour = Callable[..., Any]

_BEARER = "bearer "


@dataclass(eq=False)
class Call:
    """What the interceptors of one RPC learn about it, shared between them."""

    method: str
    metadata: Sequence[tuple[str, str | bytes]]
    request: Any
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    actor: Actor | None = None
    rejected_rules: list[str] = field(default_factory=list)

    @property
    def message(self) -> Message | None:
        """The request message of a unary-request RPC."""
        return self.request if isinstance(self.request, Message) else None

    @property
    def request_id(self) -> str:
        return str(getattr(self.message, "request_id", "") or "")

    def record(self, exc: BaseException) -> None:
        """Notes an error the call reported, for the rule-rejection metrics."""
        if isinstance(exc, RuleViolation):
            self.rejected_rules.append(exc.rule)


# Keyed on the servicer context object, which grpc creates per RPC; entries live only
# while the outermost interceptor's guard runs.
_calls: dict[object, Call] = {}


def current_call(context: grpc.ServicerContext) -> Call:
    """Returns the record of the RPC that ``context`` belongs to."""
    try:
        return _calls[context]
    except KeyError:
        msg = "no call record: build the server with ledger.api.server.interceptors()"
        raise RuntimeError(msg) from None


def actor_of(context: grpc.ServicerContext) -> Actor:
    """Returns the authenticated actor on whose behalf the RPC runs."""
    actor = current_call(context).actor
    if actor is None:
        msg = "no authenticated actor: the RPC did not pass the authorisation interceptor"
        raise RuntimeError(msg)
    return actor


@contextmanager
def _call_scope(
    details: grpc.HandlerCallDetails, request: Any, context: grpc.ServicerContext
) -> Iterator[Call]:
    call = _calls.get(context)
    if call is not None:
        yield call
        return
    call = Call(details.method, tuple(details.invocation_metadata or ()), request)
    _calls[context] = call
    try:
        yield call
    finally:
        del _calls[context]


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for request bytes that are not a message of the method's request type.

    grpc fails such a call INTERNAL before any interceptor runs, unlogged and uncounted;
    with this in its place the call passes the interceptors like any other and is refused
    INVALID_ARGUMENT (see :class:`AuthorisationInterceptor`).
    """

    error: str


@dataclass(frozen=True)
class _TolerantDeserializer:
    deserialize: Callable[[bytes], Any]

    def __call__(self, data: bytes) -> Any:
        try:
            return self.deserialize(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None or isinstance(deserialize, _TolerantDeserializer):
        return deserialize
    return _TolerantDeserializer(deserialize)


_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_BEHAVIOURS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


class GuardInterceptor(grpc.ServerInterceptor, ABC):
    """Runs :meth:`guard` around every RPC's behaviour, streamed responses included."""

    @abstractmethod
    def guard(self, call: Call, context: grpc.ServicerContext) -> AbstractContextManager[None]:
        """Returns the context manager the behaviour runs in."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        kind = (bool(handler.request_streaming), bool(handler.response_streaming))
        behaviour = getattr(handler, _BEHAVIOURS[kind])
        wrapped = self._stream(behaviour, details) if kind[1] else self._unary(behaviour, details)
        return _FACTORIES[kind](
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with _call_scope(details, request, context) as call, self.guard(call, context):
                return behaviour(request, context)

        return run

    def _stream(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        if getattr(behaviour, "experimental_non_blocking", False):
            return self._non_blocking(behaviour, details)

        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # A generator, so that errors raised while iterating pass the guard too.
            with _call_scope(details, request, context) as call, self.guard(call, context):
                yield from behaviour(request, context)

        return run

    def _non_blocking(self, behaviour: Behaviour, details: grpc.HandlerCallDetails) -> Behaviour:
        # Health's Watch registers a callback and returns at once; grpc only passes the
        # callback to behaviours marked non-blocking, so the wrapper keeps the marks.
        def run(request: Any, context: grpc.ServicerContext, send_response: Any) -> Any:
            with _call_scope(details, request, context) as call, self.guard(call, context):
                return behaviour(request, context, send_response)

        run.experimental_non_blocking = True  # type: ignore[attr-defined]
        run.experimental_thread_pool = getattr(  # type: ignore[attr-defined]
            behaviour, "experimental_thread_pool", None
        )
        return run


def _final_code(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    """Returns the name of the status code an RPC ends with."""
    if isinstance(exc, GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is not None:
        return str(code.name)
    return "OK" if exc is None else "UNKNOWN"


class _ObservingInterceptor(GuardInterceptor):
    """Calls :meth:`finished` with the final status code and duration of each RPC."""

    @abstractmethod
    def finished(self, call: Call, code: str, duration_s: float) -> None: ...

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.finished(call, _final_code(context, error), time.perf_counter() - call.started)


class LoggingInterceptor(_ObservingInterceptor):
    """Writes one structured line per RPC, and binds its method and request_id to every
    line logged while it runs. Never logs tokens or payloads."""

    def __init__(self) -> None:
        self._log = structlog.get_logger("ledger.rpc")

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        bound = {"method": call.method}
        if call.request_id:
            bound["request_id"] = call.request_id
        with structlog.contextvars.bound_contextvars(**bound), super().guard(call, context):
            yield

    def finished(self, call: Call, code: str, duration_s: float) -> None:
        principal = call.principal.id if call.principal is not None else None
        self._log.info(
            "rpc", principal=principal, code=code, duration_ms=round(duration_s * 1000, 3)
        )


class MetricsInterceptor(_ObservingInterceptor):
    """Counts RPCs by method and code, their latency, and rule rejections by rule id."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def finished(self, call: Call, code: str, duration_s: float) -> None:
        self._metrics.observe_rpc(call.method, code, duration_s)
        for rule in call.rejected_rules:
            self._metrics.count_rule_rejection(rule)


class ErrorInterceptor(GuardInterceptor):
    """Turns every error raised below it into a rich status (see ``ledger.api.errors``)."""

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        try:
            yield
        except (LedgerError, ApiError) as exc:
            call.record(exc)
            context.abort_with_status(to_grpc_status(exc, call.message))
        except Exception as exc:
            if context.code() is not None:
                raise  # the handler aborted the RPC itself
            context.abort_with_status(to_grpc_status(exc))


class DeadlineInterceptor(GuardInterceptor):
    """Refuses to start an RPC whose deadline passed while it waited for a worker."""

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the deadline passed before the call started")
        yield


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """Returns the bearer token of the ``authorization`` metadata, None if there is none."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        if not text.lower().startswith(_BEARER) or not text[len(_BEARER) :].strip():
            raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
        return text[len(_BEARER) :].strip()
    return None


class AuthenticationInterceptor(GuardInterceptor):
    """Finds the principal of the bearer token; only public methods need none."""

    def __init__(self, principals: PrincipalStore) -> None:
        self._principals = principals

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        policy = authz.policy_for(call.method)
        if policy is None or not policy.public:
            token = bearer_token(call.metadata)
            if token is None:
                raise Unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>` metadata"
                )
            call.principal = self._principals.authenticate(token)
            if call.principal is None:
                raise Unauthenticated("the bearer token is not valid")
        yield


class AuthorisationInterceptor(GuardInterceptor):
    """Applies the role policy of ``ledger.api.authz`` and builds the application actor.

    Venue scope is enforced by the application through ``Actor.venues``.
    """

    @contextmanager
    def guard(self, call: Call, context: grpc.ServicerContext) -> Iterator[None]:
        principal = call.principal
        if isinstance(call.request, UndecodableRequest):
            # After authentication, so that an anonymous caller learns nothing more.
            raise InvalidArgument.of(
                "request", f"not a valid request message: {call.request.error}"
            )
        if not authz.may_call(principal, call.method):
            role = principal.role.value if principal is not None else "anonymous"
            raise PermissionDenied(f"role {role} may not call {call.method}")
        if principal is not None:
            policy = authz.policy_for(call.method)
            acts_as = policy.acts_as if policy is not None else None
            if acts_as and not authz.may_act_as(principal, str(getattr(call.message, acts_as, ""))):
                raise PermissionDenied(
                    f"{principal.role.value} {principal.id} may only give its own id in {acts_as}"
                )
            venues = principal.scope if authz.is_restricted(principal) else None
            call.actor = Actor(principal.id, principal.role.value, venues)
        yield


def interceptors(principals: PrincipalStore, metrics: Metrics) -> list[grpc.ServerInterceptor]:
    """Returns the server's interceptors, outermost first.

    Logging and metrics are outermost so that they see every outcome, refusals
    included; error mapping comes next so that the authentication and authorisation
    refusals below it go through the same mapping as the application's errors.
    """
    return [
        LoggingInterceptor(),
        MetricsInterceptor(metrics),
        ErrorInterceptor(),
        DeadlineInterceptor(),
        AuthenticationInterceptor(principals),
        AuthorisationInterceptor(),
    ]
