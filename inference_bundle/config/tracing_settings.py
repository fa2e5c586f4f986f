"""The router's settings for traces (``tracing:``): where spans go, and how many requests.

Off unless ``otlp_endpoint`` names a collector: a router without it makes no span and sends
no trace context to its nodes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TracingSettings(BaseModel):
    """OpenTelemetry traces of each request, exported over OTLP/HTTP (README, "Traces")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the OTLP/HTTP collector's base URL (http://collector:4318); spans are "
        "posted to <otlp_endpoint>/v1/traces, the router's and its nodes' alike; default: "
        "no traces",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="the share of requests traced; a request whose client sent a "
        "traceparent follows the client's sampled flag instead",
    )
    service_name: str = Field(
        default="inference-router",
        min_length=1,
        description="the router's service.name in the traces (its nodes: inference-node)",
    )

    def traces_url(self) -> str | None:
        """Where spans are posted, or None when tracing is off."""
        if self.otlp_endpoint is None:
            return None
        return self.otlp_endpoint.rstrip("/") + "/v1/traces"
