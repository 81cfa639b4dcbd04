"""The embedded Responses server: the same wire protocol, with local models, in WebSocket
mode and over plain HTTP (``POST /v1/responses``, SSE or JSON) on one port.

It is a product feature, not a test mock: offline demos, CI, benchmarks and fault injection
all run against it, and the official SDK cannot tell it from the service.
"""

from .app import (
    LocalServer as LocalServer,
    RunningServer as RunningServer,
    ServerStatistics as ServerStatistics,
    open_local_server as open_local_server,
    serve_local_server as serve_local_server,
)
from .config import (
    Fault as Fault,
    LatencyModel as LatencyModel,
    ServerConfig as ServerConfig,
)

__all__ = [
    "Fault",
    "LatencyModel",
    "LocalServer",
    "RunningServer",
    "ServerConfig",
    "ServerStatistics",
    "open_local_server",
    "serve_local_server",
]
