"""The server's interceptor: request logging, metrics, error mapping, deadlines,
authentication and authorisation, in that order, around every RPC.

``intercept_service`` runs on the server's polling thread, which every RPC waits for, so
it only looks up the method's wrapped handler (built once per method); the concerns run
around the behaviour on the worker thread. Servicers read the RPC's :class:`Call` record
(the authenticated actor among it) with :func:`actor_of` and :func:`current_call` (not
from contextvars, which do not reliably reach sync handlers from ``intercept_service``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from ledger.api import authz
from ledger.api.errors import ApiError, DeadlineExceeded, Unauthenticated, to_grpc_status
from ledger.api.principals import Principal, PrincipalStore
from ledger.application.app import Actor
from ledger.domain.errors import InvalidArgument, LedgerError, PermissionDenied, RuleViolation
from ledger.logging import bind_request_context, log_line, unbind_request_context
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


def _final_code(context: grpc.ServicerContext, exc: BaseException | None) -> str:
    """Returns the name of the status code an RPC ends with."""
    if isinstance(exc, GeneratorExit):
        return "CANCELLED"
    code = context.code()
    if code is not None:
        return str(code.name)
    return "OK" if exc is None else "UNKNOWN"


class RequestLog:
    """One structured line per RPC; the RPC's method and request_id go on every line
    logged while it runs. Never logs tokens or payloads."""

    def started(self, call: Call) -> Token[Mapping[str, Any]]:
        request_id = call.request_id
        bound = (
            {"method": call.method, "request_id": request_id}
            if request_id
            else {"method": call.method}
        )
        return bind_request_context(bound)

    def finished(self, call: Call, code: str, duration_s: float) -> None:
        principal = call.principal.id if call.principal is not None else None
        log_line(
            "ledger.rpc",
            "rpc",
            principal=principal,
            code=code,
            duration_ms=round(duration_s * 1000, 3),
        )


class RpcMetrics:
    """Counts RPCs by method and code, their latency, and rule rejections by rule id."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def finished(self, call: Call, code: str, duration_s: float) -> None:
        self._metrics.observe_rpc(call.method, code, duration_s)
        for rule in call.rejected_rules:
            self._metrics.count_rule_rejection(rule)


def refuse_late(context: grpc.ServicerContext) -> None:
    """Refuses to start an RPC whose deadline passed while it waited for a worker."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceeded("the deadline passed before the call started")


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


class Authentication:
    """Finds the principal of the bearer token; only public methods need none."""

    def __init__(self, principals: PrincipalStore) -> None:
        self._principals = principals

    def admit(self, call: Call) -> None:
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


def authorise(call: Call) -> None:
    """Applies the role policy of ``ledger.api.authz`` and builds the application actor.

    Venue scope is enforced by the application through ``Actor.venues``.
    """
    principal = call.principal
    if isinstance(call.request, UndecodableRequest):
        # After authentication, so that an anonymous caller learns nothing more.
        raise InvalidArgument.of("request", f"not a valid request message: {call.request.error}")
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


class LedgerInterceptor(grpc.ServerInterceptor):
    """Runs every concern of this module around each RPC's behaviour, streamed responses
    included: the request log and metrics see every outcome, refusals included; errors
    raised below them (the refusals of the deadline, authentication and authorisation
    checks, and the application's) go through one mapping to a rich status."""

    def __init__(
        self,
        principals: PrincipalStore,
        metrics: Metrics,
        read_pool: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._read_pool = read_pool
        self._log = RequestLog()
        self._metrics = RpcMetrics(metrics)
        self._authentication = Authentication(principals)
        # Wrapped handlers by method; only the polling thread reads and writes it.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = continuation(details)
            if handler is None:
                return None
            wrapped = self._handlers[method] = self._wrap(method, handler)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = (bool(handler.request_streaming), bool(handler.response_streaming))
        behaviour = getattr(handler, _BEHAVIOURS[kind])
        if not kind[1]:
            wrapped = self._unary(method, behaviour)
            policy = authz.policy_for(method)
            if not kind[0] and self._read_pool and policy is not None and not policy.mutation:
                wrapped.experimental_thread_pool = self._read_pool  # type: ignore[attr-defined]
        elif getattr(behaviour, "experimental_non_blocking", False):
            wrapped = self._non_blocking(method, behaviour)
        else:
            wrapped = self._stream(method, behaviour)
        return _FACTORIES[kind](
            wrapped,
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            call = Call(method, context.invocation_metadata(), request)
            with _Scope(self, call, context):
                self.admit(call, context)
                return behaviour(request, context)

        return run

    def _stream(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            # A generator, so that errors raised while iterating pass the scope too.
            call = Call(method, context.invocation_metadata(), request)
            with _Scope(self, call, context):
                self.admit(call, context)
                yield from behaviour(request, context)

        return run

    def _non_blocking(self, method: str, behaviour: Behaviour) -> Behaviour:
        # Health's Watch registers a callback and returns at once; grpc only passes the
        # callback to behaviours marked non-blocking, so the wrapper keeps the marks.
        def run(request: Any, context: grpc.ServicerContext, send_response: Any) -> Any:
            call = Call(method, context.invocation_metadata(), request)
            with _Scope(self, call, context):
                self.admit(call, context)
                return behaviour(request, context, send_response)

        run.experimental_non_blocking = True  # type: ignore[attr-defined]
        run.experimental_thread_pool = getattr(  # type: ignore[attr-defined]
            behaviour, "experimental_thread_pool", None
        )
        return run

    def admit(self, call: Call, context: grpc.ServicerContext) -> None:
        """Lets the RPC run, or raises why not."""
        refuse_late(context)
        self._authentication.admit(call)
        authorise(call)

    def fail(self, call: Call, context: grpc.ServicerContext, exc: Exception) -> None:
        """Ends the RPC with the rich status of ``exc`` (see ``ledger.api.errors``), unless
        the handler aborted it itself."""
        if isinstance(exc, LedgerError | ApiError):
            call.record(exc)
            context.abort_with_status(to_grpc_status(exc, call.message))
        elif context.code() is None:
            context.abort_with_status(to_grpc_status(exc))

    def started(self, call: Call) -> Token[Mapping[str, Any]]:
        """Binds the RPC's log context; returns the token that ends it."""
        return self._log.started(call)

    def finished(
        self, call: Call, context: grpc.ServicerContext, exc: BaseException | None
    ) -> None:
        code = _final_code(context, exc)
        duration_s = time.perf_counter() - call.started
        self._metrics.finished(call, code, duration_s)
        self._log.finished(call, code, duration_s)


class _Scope:
    """The span of one RPC: its record is current and its log context bound while the
    behaviour runs; on the way out an error becomes a status, and the outcome is
    logged and counted."""

    __slots__ = ("_context", "_interceptor", "_token", "call")

    def __init__(
        self, interceptor: LedgerInterceptor, call: Call, context: grpc.ServicerContext
    ) -> None:
        self._interceptor = interceptor
        self._context = context
        self.call = call

    def __enter__(self) -> Call:
        _calls[self._context] = self.call
        self._token = self._interceptor.started(self.call)
        return self.call

    def __exit__(
        self, _type: type[BaseException] | None, exc: BaseException | None, _tb: Any
    ) -> None:
        error = exc
        try:
            if isinstance(exc, Exception):
                try:
                    self._interceptor.fail(self.call, self._context, exc)
                except BaseException as raised:
                    error = raised
                    raise
        finally:
            self._interceptor.finished(self.call, self._context, error)
            del _calls[self._context]
            unbind_request_context(self._token)


def interceptors(
    principals: PrincipalStore,
    metrics: Metrics,
    read_pool: futures.ThreadPoolExecutor | None = None,
) -> list[grpc.ServerInterceptor]:
    """Returns the server's interceptors, outermost first; with ``read_pool``, the unary
    calls that change nothing run on its threads (grpc's per-behaviour thread pool)."""
    return [LedgerInterceptor(principals, metrics, read_pool)]
