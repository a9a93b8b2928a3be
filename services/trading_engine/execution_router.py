"""Which broker namespaces a strategy's signals are executed on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from core.config.settings import Settings
from core.streaming.topic_names import validate_topic_name


def _namespaces(names: Iterable[str], what: str) -> tuple[str, ...]:
    """Validated namespaces, duplicates dropped, first occurrence order kept."""
    if isinstance(names, str):
        raise TypeError(f"{what} must be a sequence of namespaces, not a string")
    unique = tuple(dict.fromkeys(validate_topic_name(name) for name in names))
    if not unique:
        raise ValueError(f"{what} is empty")
    return unique


class ExecutionRouter:
    """Maps a strategy id to the namespaces whose traders execute its signals.

    Namespaces become topic prefixes, so each must be a legal topic name. A route
    that lists no namespace is refused: leave the strategy out to use the defaults.
    """

    def __init__(
        self, routes: Mapping[str, Sequence[str]], default_namespaces: Sequence[str]
    ) -> None:
        self._defaults = _namespaces(default_namespaces, "default namespaces")
        self._routes: dict[str, tuple[str, ...]] = {}
        for strategy_id, namespaces in routes.items():
            if not strategy_id:
                raise ValueError("a route has an empty strategy id")
            self._routes[strategy_id] = _namespaces(namespaces, f"route of {strategy_id!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ExecutionRouter:
        """Routes from ``trading.strategy_routes``; defaults to ``[broker_namespace]``."""
        return cls(settings.trading.strategy_routes, [settings.broker_namespace])

    @property
    def default_namespaces(self) -> list[str]:
        """Namespaces of strategies without a route."""
        return list(self._defaults)

    def all_namespaces(self) -> list[str]:
        """Every namespace any strategy can reach, defaults first."""
        every = [*self._defaults, *(ns for route in self._routes.values() for ns in route)]
        return list(dict.fromkeys(every))

    async def get_target_namespaces(self, strategy_id: str) -> list[str]:
        """Namespaces to execute ``strategy_id``'s signals on, in configured order."""
        return list(self._routes.get(strategy_id, self._defaults))
