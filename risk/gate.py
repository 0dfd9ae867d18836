"""The risk gate: every order intent passes it.

``RiskGate.check`` runs the rules of risk/checks.py in a fixed order, each
able to refuse or to size the lots down, then slices what remains above the
freeze quantity. ``record_refusal`` stores a refusal (GateRefusal and an
audit record, in one transaction) with its rule and reason.
"""

from __future__ import annotations

import logging

from django.db import transaction

from audit import actors
from audit.chain import append as audit_append
from risk.checks import RULES, GateContext, RiskDecision, freeze_slices
from risk.models import GateRefusal

log = logging.getLogger(__name__)


class RiskGate:
    def __init__(self, rules=RULES):
        self.rules = rules

    def check(self, intent, ctx: GateContext) -> RiskDecision:
        lots = intent.lots
        if lots <= 0:
            return RiskDecision(False, "an intent needs at least one lot", "input", 0)
        sized_by = []
        for rule in self.rules:
            result = rule(intent, ctx, lots)
            if isinstance(result, RiskDecision):
                return result
            if result < lots:
                sized_by.append(f"{rule.__name__}: {lots}→{result} lots")
            lots = result
        slices = freeze_slices(lots * ctx.lot_size, ctx.lot_size, ctx.freeze_quantity)
        return RiskDecision(True, "; ".join(sized_by), "passed", lots, slices)


def record_refusal(intent, decision: RiskDecision, ctx: GateContext, *, account: str = "default") -> GateRefusal:
    with transaction.atomic():
        refusal = GateRefusal.objects.create(
            account=account,
            refused_at=ctx.now,
            rule=decision.rule,
            reason=decision.reason,
            strategy_key=intent.strategy_key,
            signal_key=intent.signal_key or "",
            security_id=intent.security_id,
            side=intent.side,
            purpose=intent.purpose,
            requested_lots=intent.lots,
            trading_state=ctx.trading_state,
            details={
                "lots_for_signal": ctx.lots_for_signal,
                "lots_for_strategy": ctx.lots_for_strategy,
                "daily_net_pnl": str(ctx.daily_net_pnl),
                "feed_stale": ctx.feed_stale,
            },
        )
        audit_append(
            "gate.refused",
            actor=actors.component(),
            subject=f"intent:{intent.security_id}",
            payload={
                "rule": decision.rule,
                "reason": decision.reason,
                "strategy": intent.strategy_key,
                "signal": intent.signal_key,
                "lots": intent.lots,
                "side": intent.side,
                "purpose": intent.purpose,
            },
            at=ctx.now,
        )
    log.info(
        "intent refused", extra={"rule": decision.rule, "reason": decision.reason, "security_id": intent.security_id}
    )
    return refusal
