"""Water-leak detection: night flow and bursts per DMA, customer meters, the water balance, and
the alerts with their lifecycle (see README.md). Pure numeric modules (``detect``, ``nights``,
``customers``, ``balance``), SQL in ``store``, the service and the scan in ``service``, the
``[anomaly]`` section in ``config``."""
