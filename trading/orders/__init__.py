"""The order path: the order manager, fills and accounting, reconciliation and the ways out."""
