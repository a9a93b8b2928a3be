"""Topic names of the trading platform: global ones and per-namespace ones."""

from __future__ import annotations

from core.topic_names import validate_topic_name


class TopicNames:
    """Topics shared by every namespace."""

    MARKET_TICKS = validate_topic_name("market.ticks")

    @classmethod
    def all(cls) -> list[str]:
        """Every global topic."""
        return [cls.MARKET_TICKS]


class TopicMap:
    """Topics of one broker namespace (for example ``paper`` or ``live``)."""

    def __init__(self, namespace: str) -> None:
        validate_topic_name(namespace)
        self.namespace = namespace

    def _topic(self, suffix: str) -> str:
        return validate_topic_name(f"{self.namespace}.{suffix}")

    def signals_raw(self) -> str:
        """Signals as strategies emit them, before validation."""
        return self._topic("signals.raw")

    def signals_validated(self) -> str:
        """Signals that passed validation, input of the trading engine."""
        return self._topic("signals.validated")

    def signals_rejected(self) -> str:
        """Signals refused by the validator or the trading engine, with a reason."""
        return self._topic("signals.rejected")

    def orders(self) -> str:
        """Orders placed on a trader of this namespace."""
        return self._topic("orders")

    def executions(self) -> str:
        """Fills and order rejections of this namespace."""
        return self._topic("executions")

    def all(self) -> list[str]:
        """Every topic of this namespace."""
        return [
            self.signals_raw(),
            self.signals_validated(),
            self.signals_rejected(),
            self.orders(),
            self.executions(),
        ]
