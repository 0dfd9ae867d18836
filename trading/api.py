"""REST API for trading: summary, positions (and exiting one), orders, trades, strategies."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from quanthub.api import ApiView, Pagination, StrictSerializerMixin, actor, require_perm, run_in_fresh_thread
from quanthub.clock import IST
from trading import services
from trading.models import Order, Position, Strategy, Trade
from trading.orders.requests import ExitRefused, refuse_unless_exitable, request_exit, request_kill_all
from trading.selectors import market_now, overview

# --- summary ---------------------------------------------------------------------------


class SummaryView(ApiView):
    @extend_schema(
        summary="Today at a glance",
        description="Gross and net P&L, charges, open positions, trading state, engine heartbeat, "
        "feed health and open alerts of the account this server trades (QUANTHUB_ACCOUNT).",
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        # Money as two-decimal strings, times in IST with their offset (Overview.as_dict).
        return Response(overview(account=settings.QUANTHUB_ACCOUNT).as_dict())


# --- positions ---------------------------------------------------------------------------


class _BookRowSerializer(serializers.ModelSerializer):
    """Positions, orders and trades name their instrument, strategy and signal."""

    instrument = serializers.CharField(source="instrument.display")
    security_id = serializers.CharField(source="instrument.security_id")
    strategy = serializers.CharField(source="strategy.key", allow_null=True, default=None)
    signal = serializers.CharField(source="signal.key", allow_null=True, default=None)


class PositionSerializer(_BookRowSerializer):
    net_pnl = serializers.DecimalField(max_digits=16, decimal_places=2, read_only=True)
    expires_at = serializers.SerializerMethodField(help_text="opened_at + ttl_seconds: when the time stop falls due.")
    ttl_remaining_s = serializers.SerializerMethodField(help_text="Seconds until the time stop; 0 when past.")

    class Meta:
        model = Position
        fields = (
            "id",
            "account",
            "instrument",
            "security_id",
            "strategy",
            "signal",
            "net_quantity",
            "average_price",
            "last_price",
            "realised_pnl",
            "unrealised_pnl",
            "charges",
            "net_pnl",
            "delta",
            "gamma",
            "theta",
            "vega",
            "stop_price",
            "target_price",
            "opened_at",
            "ttl_seconds",
            "expires_at",
            "ttl_remaining_s",
            "updated_at",
        )

    def get_expires_at(self, position: Position) -> dt.datetime | None:
        if position.opened_at is None or position.ttl_seconds is None:
            return None
        return position.opened_at + dt.timedelta(seconds=position.ttl_seconds)

    def get_ttl_remaining_s(self, position: Position) -> int | None:
        expires = self.get_expires_at(position)
        if expires is None:
            return None
        # On the engine's clock (simulated in a demo or replay), like the positions grid.
        now = self.context.get("market_now") or market_now(position.account)
        return max(int((expires - now).total_seconds()), 0)


class PositionList(ApiView, generics.ListAPIView):
    """Open positions (net quantity not zero) with Greeks, stop, target and time-to-live."""

    serializer_class = PositionSerializer
    pagination_class = Pagination

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "market_now": market_now(settings.QUANTHUB_ACCOUNT)}

    def get_queryset(self):
        return (
            Position.objects.filter(account=settings.QUANTHUB_ACCOUNT)
            .exclude(net_quantity=0)
            .select_related("instrument", "instrument__underlying", "strategy", "signal")
        )


class OrderSerializer(_BookRowSerializer):
    class Meta:
        model = Order
        fields = (
            "id",
            "client_order_id",
            "broker_order_id",
            "account",
            "instrument",
            "security_id",
            "strategy",
            "signal",
            "side",
            "purpose",
            "order_type",
            "quantity",
            "limit_price",
            "filled_quantity",
            "average_price",
            "state",
            "reject_code",
            "reason",
            "requote_count",
            "created_at",
            "sent_at",
            "acked_at",
            "filled_at",
            "cancelled_at",
            "rejected_at",
            "updated_at",
        )


FLATTEN_LEG = (
    "{}Leg",
    {
        "security_id": serializers.CharField(),
        "symbol": serializers.CharField(),
        "quantity": serializers.IntegerField(help_text="Net when the flatten began."),
        "open": serializers.IntegerField(help_text="Net still open at the end."),
        "sent": serializers.IntegerField(),
        "filled": serializers.IntegerField(),
        "rejected": serializers.IntegerField(),
        "why": serializers.ListField(child=serializers.CharField()),
    },
)


def flatten_result(name: str):
    """The schema of ``FlattenResult.as_dict()`` plus who worked the request."""
    return inline_serializer(
        name,
        {
            "kind": serializers.CharField(),
            "actor": serializers.CharField(),
            "reason": serializers.CharField(),
            "legs": serializers.IntegerField(),
            "sent": serializers.IntegerField(),
            "filled": serializers.IntegerField(),
            "rejected": serializers.IntegerField(),
            "cancelled": serializers.IntegerField(),
            "still_open": serializers.ListField(child=serializers.CharField()),
            "flat": serializers.BooleanField(),
            "kill_switch": serializers.BooleanField(),
            "sent_s": serializers.FloatField(allow_null=True),
            "flat_s": serializers.FloatField(allow_null=True),
            "elapsed_s": serializers.FloatField(),
            "errors": serializers.ListField(child=serializers.CharField()),
            "detail": inline_serializer(FLATTEN_LEG[0].format(name), FLATTEN_LEG[1], many=True),
            "worked_by": serializers.CharField(help_text="The engine's id, or standalone:<host>-<pid>."),
            "joined": serializers.BooleanField(help_text="True when a request already running was joined."),
            "request": serializers.IntegerField(),
        },
    )


class PositionExit(ApiView):
    permission_classes = [IsAuthenticated, require_perm("trading.exit_position")]

    @extend_schema(
        summary="Exit one position (and its signal's hedge)",
        description="Through the order manager of the one sender for the account: the engine holding the "
        "account's lock works it when it runs (it takes the request within a second), else this request "
        "works it itself. One order per freeze-quantity slice in the priority lane, re-priced at the touch "
        "and re-sent after a reject until flat or 10 s. Returns the result built from the actual order and "
        "position states (`flat`, `still_open`, each leg's rejects). 409 when the position is flat or an "
        "exit of it is already being worked. Allowed in any trading state: an exit only reduces exposure.",
        request=None,
        responses={200: flatten_result("PositionExitResult"), 409: OpenApiTypes.OBJECT},
    )
    def post(self, request: Request, pk: int) -> Response:
        position = get_object_or_404(Position, pk=pk, account=settings.QUANTHUB_ACCOUNT)
        try:
            refuse_unless_exitable(position)
            # Waiting for the result (and perhaps working it, asyncio.run): off the ASGI request thread.
            result = run_in_fresh_thread(request_exit, pk, actor(request), settings.QUANTHUB_ACCOUNT)
        except ExitRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(result)


class KillAllRequest(serializers.Serializer):
    reason = serializers.CharField(max_length=500, default="Kill All from the API", trim_whitespace=True)
    timeout_s = serializers.FloatField(min_value=1, max_value=60, default=15.0)


class KillAllView(ApiView):
    permission_classes = [IsAuthenticated, require_perm("trading.kill_all")]

    @extend_schema(
        summary="Kill All",
        description="HALT, cancel every open order, flatten what the broker reports (retrying rejects, "
        "throttles and unknown outcomes at the current touch), and when flat activate the broker's kill "
        "switch. Worked by the engine holding the account's lock, or standalone when none takes it within "
        "2 s. Blocks until flat or timeout_s; the result says what is still open and why.",
        request=KillAllRequest,
        responses=flatten_result("KillAllResult"),
    )
    def post(self, request: Request) -> Response:
        body = KillAllRequest(data=request.data)
        body.is_valid(raise_exception=True)
        result = run_in_fresh_thread(
            request_kill_all,
            actor(request),
            body.validated_data["reason"],
            settings.QUANTHUB_ACCOUNT,
            deadline_s=body.validated_data["timeout_s"],
        )
        return Response(result)


# --- orders and trades ---------------------------------------------------------------------


class OrderFilter(StrictSerializerMixin, serializers.Serializer):
    state = serializers.MultipleChoiceField(choices=Order.State.choices, required=False)
    date = serializers.DateField(required=False, help_text="Trading day (IST) the order was created.")


class OrderList(ApiView, generics.ListAPIView):
    serializer_class = OrderSerializer
    pagination_class = Pagination

    @extend_schema(
        parameters=[
            OpenApiParameter("state", OpenApiTypes.STR, many=True, enum=Order.State.values, description="Repeatable."),
            OpenApiParameter("date", OpenApiTypes.DATE, description="Trading day (IST) the order was created."),
        ]
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = self.request.query_params
        data = {"state": params.getlist("state")}
        if "date" in params:
            data["date"] = params["date"]
        query = OrderFilter(data=data)
        query.is_valid(raise_exception=True)
        orders = Order.objects.filter(account=settings.QUANTHUB_ACCOUNT).select_related(
            "instrument", "strategy", "signal"
        )
        if query.validated_data.get("state"):
            orders = orders.filter(state__in=query.validated_data["state"])
        if query.validated_data.get("date"):
            day = query.validated_data["date"]
            start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
            orders = orders.filter(created_at__gte=start, created_at__lt=start + dt.timedelta(days=1))
        return orders


class TradeSerializer(_BookRowSerializer):
    class Meta:
        model = Trade
        fields = (
            "id",
            "account",
            "instrument",
            "security_id",
            "strategy",
            "signal",
            "direction",
            "quantity",
            "entry_price",
            "exit_price",
            "opened_at",
            "closed_at",
            "gross_pnl",
            "charges",
            "net_pnl",
            "exit_reason",
            "risk_amount",
        )


class TradeList(ApiView, generics.ListAPIView):
    """Round-trip trades, newest first."""

    serializer_class = TradeSerializer
    pagination_class = Pagination

    def get_queryset(self):
        return Trade.objects.filter(account=settings.QUANTHUB_ACCOUNT).select_related(
            "instrument", "strategy", "signal"
        )


# --- strategies ------------------------------------------------------------------------------


class StrategySerializer(serializers.ModelSerializer):
    class Meta:
        model = Strategy
        fields = ("id", "key", "name", "enabled", "version", "params", "updated_at")
        read_only_fields = fields


class StrategyList(ApiView, generics.ListAPIView):
    serializer_class = StrategySerializer

    def get_queryset(self):
        return Strategy.objects.all()


class ToggleSerializer(StrictSerializerMixin, serializers.Serializer):
    enabled = serializers.BooleanField(
        required=False, help_text="The state wanted; left out, the strategy's switch is flipped."
    )


class StrategyToggle(ApiView):
    permission_classes = [IsAuthenticated, require_perm("trading.toggle_strategy")]

    @extend_schema(
        summary="Enable or disable a strategy",
        description="Audited like the admin's actions; bumps the strategy's version so the engine picks "
        "the change up at its next snapshot. Disabling stops new entries only.",
        request=ToggleSerializer,
        responses={
            200: inline_serializer(
                "StrategyToggled", {"changed": serializers.BooleanField(), "strategy": StrategySerializer()}
            )
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        strategy = get_object_or_404(Strategy, pk=pk)
        body = ToggleSerializer(data=request.data if request.body else {})
        body.is_valid(raise_exception=True)
        enabled = body.validated_data.get("enabled", not strategy.enabled)
        changed = services.set_strategy_enabled(strategy, enabled, actor=actor(request))
        strategy.refresh_from_db()
        return Response({"changed": changed, "strategy": StrategySerializer(strategy).data})
