"""sobriety: supervision of public lighting and drinking-water networks.

The shared core, at the bottom of the three layers: configuration, the MQTT contract (topics,
metrics, payload codecs, the typed ``config``/``cmd``/``state`` payloads), errors, the clock,
database access and migrations, the inventory. It imports no stage: the stages (``ingest``,
``anomaly``, ``policies``, ``energy``, ``simulators``, ``dashboards``) sit above it and the
application (``app``: the ``sobriety`` command) on top.
"""

from core.config import Config, load_config
from core.contract import METRICS, TopicParts, build_topic, parse_topic
from core.errors import ConfigError, PayloadError, RejectReason, TopicError
from core.messages import Command, DeviceConfig, DeviceState, LightingProgram, Reporting
from core.payloads import RawRecord, decode, encode_senml

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "Command",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "DeviceState",
    "LightingProgram",
    "PayloadError",
    "RawRecord",
    "RejectReason",
    "Reporting",
    "TopicError",
    "TopicParts",
    "__version__",
    "build_topic",
    "decode",
    "encode_senml",
    "load_config",
    "parse_topic",
]
