"""REST API for risk: limits (read by all, edited by risk managers), trading state, Kill All."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from quanthub.api import ApiView, HasRole, IstTimeField, StrictSerializerMixin, actor, require_perm
from quanthub.clock import IST
from risk import services
from risk.models import BreakerTrip, EventDay, RiskLimits, TradingState
from trading.models import ReconciliationBreak


class RiskLimitsSerializer(StrictSerializerMixin, serializers.ModelSerializer):
    serializer_field_mapping = {**serializers.ModelSerializer.serializer_field_mapping, models.TimeField: IstTimeField}

    class Meta:
        model = RiskLimits
        exclude = ("is_active",)
        read_only_fields = ("id", "version", "updated_at", "updated_by")


class RiskLimitsView(ApiView):
    """The active risk limits. Any role reads them; a risk manager changes them."""

    def get_permissions(self):
        if self.request.method in ("PUT", "PATCH"):
            return [IsAuthenticated(), require_perm("risk.change_risklimits")()]
        return [IsAuthenticated(), HasRole()]

    @extend_schema(responses=RiskLimitsSerializer)
    def get(self, request: Request) -> Response:
        return Response(RiskLimitsSerializer(RiskLimits.active()).data)

    @extend_schema(
        request=RiskLimitsSerializer,
        responses=RiskLimitsSerializer,
        description="Replace the active limits' values. The same validation and audited service as the "
        "admin form: a new version, old and new values in the audit log; 400 names each bad field.",
    )
    def put(self, request: Request) -> Response:
        return self._save(request, partial=False)

    @extend_schema(request=RiskLimitsSerializer, responses=RiskLimitsSerializer)
    def patch(self, request: Request) -> Response:
        return self._save(request, partial=True)

    def _save(self, request: Request, *, partial: bool) -> Response:
        limits = RiskLimits.active()
        body = RiskLimitsSerializer(limits, data=request.data, partial=partial)
        if not isinstance(request.data, dict) or not request.data:
            raise ValidationError({"detail": ["Send the limits as a JSON object."]})
        if not partial:  # PUT replaces: every writable field, none left to a default
            writable = [name for name, field in body.fields.items() if not field.read_only]
            missing = [name for name in writable if name not in request.data]
            if missing:
                raise ValidationError({name: ["This field is required."] for name in missing})
        body.is_valid(raise_exception=True)
        for name, value in body.validated_data.items():
            setattr(limits, name, value)
        try:
            services.save_risk_limits(limits, actor=actor(request))
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        return Response(RiskLimitsSerializer(limits).data)


class TradingStateSerializer(serializers.ModelSerializer):
    class Meta:
        model = TradingState
        fields = ("account", "state", "actor", "reason", "changed_at", "halted_until")


class BreakerSerializer(serializers.ModelSerializer):
    class Meta:
        model = BreakerTrip
        fields = ("breaker", "tripped_at", "reason", "details")


class EventDaySerializer(serializers.ModelSerializer):
    class Meta:
        model = EventDay
        fields = ("date", "kind", "action", "note")


class RiskStateView(ApiView):
    @extend_schema(
        summary="Trading state, open breakers, today's event days, open reconciliation breaks",
        responses=inline_serializer(
            "RiskState",
            {
                "trading_state": TradingStateSerializer(),
                "open_breakers": BreakerSerializer(many=True),
                "event_days_today": EventDaySerializer(many=True),
                "open_reconciliation_breaks": serializers.IntegerField(),
                "limits_version": serializers.IntegerField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        from django.utils import timezone

        account = settings.QUANTHUB_ACCOUNT
        today = timezone.now().astimezone(IST).date()
        return Response(
            {
                "trading_state": TradingStateSerializer(services.get_trading_state(account)).data,
                "open_breakers": BreakerSerializer(
                    BreakerTrip.objects.filter(account=account, cleared_at__isnull=True), many=True
                ).data,
                "event_days_today": EventDaySerializer(EventDay.objects.filter(date=today), many=True).data,
                "open_reconciliation_breaks": ReconciliationBreak.objects.filter(
                    account=account, resolved_at__isnull=True
                ).count(),
                "limits_version": RiskLimits.active().version,
            }
        )
