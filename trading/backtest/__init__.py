"""Backtests: the live engine on stored or simulated days, at full speed.

``runner`` drives ``trading.engine.Engine`` (unchanged) day by day under an
account of its own; ``report`` turns what the run left in the database into
the report and its decision hash. ``manage.py backtest`` is the thin shell.
"""
