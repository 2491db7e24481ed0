"""The wire contract: names, message types, codec and JetStream settings.

Imports only the standard library and msgspec, so every other package can depend on it.
"""

from subjects.codec import BadMessage
from subjects.messages import (
    CacheClass,
    ChatMessage,
    ChatRequest,
    Chunk,
    Decision,
    DecisionPath,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Reply,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    TaskClass,
    Usage,
    WorkItem,
)
from subjects.names import ANY_REPLICA, BadName, Names, WorkAddress, slug

__all__ = [
    "ANY_REPLICA",
    "BadMessage",
    "BadName",
    "CacheClass",
    "ChatMessage",
    "ChatRequest",
    "Chunk",
    "Decision",
    "DecisionPath",
    "ErrorCode",
    "ErrorReply",
    "Heartbeat",
    "Names",
    "Reply",
    "RoutingContext",
    "SafetyCategory",
    "Script",
    "Structured",
    "TaskClass",
    "Usage",
    "WorkAddress",
    "WorkItem",
    "slug",
]
