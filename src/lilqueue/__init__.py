"""lilqueue: background jobs that never get lost, on the backend you already run."""

from lilqueue.adapters.base import Adapter, Capabilities, HeldJob, Job, Peeked, QueueStats, Support
from lilqueue.app import App
from lilqueue.config import RetryPolicy, Settings, load_settings
from lilqueue.errors import (
    BackendConnectionError,
    BackendError,
    BackendTimeoutError,
    ConfigError,
    LilqueueError,
    TaskError,
    UnsupportedError,
    WireError,
)
from lilqueue.handler import HeldTask, QueueHandler, Worker
from lilqueue.task import Outcome, Task

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "App",
    "BackendConnectionError",
    "BackendError",
    "BackendTimeoutError",
    "Capabilities",
    "ConfigError",
    "HeldJob",
    "HeldTask",
    "Job",
    "LilqueueError",
    "Outcome",
    "Peeked",
    "QueueHandler",
    "QueueStats",
    "RetryPolicy",
    "Settings",
    "Support",
    "Task",
    "TaskError",
    "UnsupportedError",
    "WireError",
    "Worker",
    "load_settings",
]
