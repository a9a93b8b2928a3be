"""The legacy ``StreamProcessor`` base class as an adapter, and the per-service rollout switch.

Only for services on their way to the builder: nothing on the consume path
imports this package, and it goes away with the last ``StreamProcessor`` subclass.
"""

from core.streaming.legacy.rollout import (
    RunnableService,
    build_selected,
    selected_shape,
    serve,
)
from core.streaming.legacy.stream_processor import StreamProcessor, handler_method_name

__all__ = [
    "RunnableService",
    "StreamProcessor",
    "build_selected",
    "handler_method_name",
    "selected_shape",
    "serve",
]
