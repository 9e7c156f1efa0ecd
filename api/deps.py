"""Dependencies of the route handlers, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from core.resources import Resources
from ingest.worker import IngestServices
from retrieval.ask import AskService


@dataclass
class AppServices:
    """Everything the routes use, built once at start-up (see `api.main.lifespan`)."""

    resources: Resources
    ingest: IngestServices
    ask: AskService


def get_services(request: Request) -> AppServices:
    return request.app.state.services


def get_tenant(request: Request) -> str:
    """The caller's tenant. Until API keys exist every request belongs to the default tenant;
    this is the one place that will change."""
    return request.app.state.services.resources.settings.default_tenant


ServicesDep = Annotated[AppServices, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
