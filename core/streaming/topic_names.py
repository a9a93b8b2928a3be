"""Kafka's rules for legal topic names; defined in ``core.topic_names``, shared with schemas."""

from __future__ import annotations

from core.topic_names import MAX_TOPIC_LENGTH, InvalidTopicNameError, validate_topic_name

__all__ = ["MAX_TOPIC_LENGTH", "InvalidTopicNameError", "validate_topic_name"]
