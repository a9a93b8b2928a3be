"""Services of the trading pipeline, built with the ``core.streaming`` framework.

``market_data`` (simulated ticks) -> ``strategy_runner`` (raw signals) ->
``signal_validator`` (validated or rejected signals) -> ``trading_engine`` (orders
and executions on paper traders). ``services.registry`` builds any of them by name.
Importing this package imports nothing else.
"""
