"""Backtests: the live engine on stored or simulated days, at full speed.

``runner`` drives ``trading.engine.Engine`` (unchanged) day by day under an
account of its own; ``report`` turns what the run left in the database into
the report and its decision hash; ``fanout`` splits a range of days and a
parameter grid into one task per (day, parameter set) on Celery or a local
process pool (``pool``) and aggregates their reports. ``manage.py backtest``
and the backtest pages are the thin shells.
"""
