"""Dependencies of the route handlers, declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from core.resources import Resources
from finetune.worker import FinetuneServices
from ingest.worker import IngestServices
from modules.configs import ConfigStore
from retrieval.ask import AskService
from retrieval.search import SearchService


@dataclass
class AppServices:
    """Everything the routes use, built once at start-up (see `api.main.lifespan`)."""

    resources: Resources
    ingest: IngestServices
    ask: AskService
    search: SearchService
    configs: ConfigStore
    finetune: FinetuneServices


def get_services(request: Request) -> AppServices:
    return request.app.state.services


def get_tenant(request: Request) -> str:
    """The caller's tenant. Until API keys exist every request belongs to the default tenant;
    this is the one place that will change."""
    return request.app.state.services.resources.settings.default_tenant


def get_author(
    x_sieve_user: Annotated[
        str, Header(min_length=1, max_length=128, description="Who makes a config change (recorded in its history).")
    ] = "anonymous",
) -> str:
    """The author of a change. Until API keys exist it is whatever `X-Sieve-User` says;
    this is the one place that will use the key's principal instead."""
    return x_sieve_user


ServicesDep = Annotated[AppServices, Depends(get_services)]
TenantDep = Annotated[str, Depends(get_tenant)]
AuthorDep = Annotated[str, Depends(get_author)]
