"""sobriety: supervision of public lighting and drinking-water networks.

The shared core: configuration, the MQTT contract (topics, payload codecs), database access and
migrations, the clock and the ``sobriety`` command line. Stages live in their own packages
(``ingest``, ``policies``, ``anomaly``, ``energy``, ``simulators``).
"""

from core.config import Config, load_config
from core.contract import METRICS, TopicParts, build_topic, parse_topic
from core.errors import ConfigError, PayloadError, RejectReason, TopicError
from core.payloads import RawRecord, decode, encode_senml

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "Config",
    "ConfigError",
    "PayloadError",
    "RawRecord",
    "RejectReason",
    "TopicError",
    "TopicParts",
    "__version__",
    "build_topic",
    "decode",
    "encode_senml",
    "load_config",
    "parse_topic",
]
