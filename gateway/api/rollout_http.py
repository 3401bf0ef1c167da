"""`/v1/rollout`: the rollout operations over HTTP, behind a bearer token (disabled when none is configured)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Header, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from gateway.api.http import ERRORS
from gateway.errors import GatewayError, Unauthorized
from gateway.rollout.manager import RolloutManager


class Disabled(GatewayError):
    http_status = 403
    code = "disabled"


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: StrictInt = Field(ge=1, description="the exported version to roll out as canary")
    weight: float = Field(ge=0, le=100, description="percent of traffic sent to the canary")
    shadow: float = Field(0, ge=0, le=100, description="percent of stable traffic mirrored to the canary")


class WeightRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(ge=0, le=100)
    shadow: float | None = Field(None, ge=0, le=100)


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("aborted by operator", max_length=200)


class RolloutStatus(BaseModel):
    model: str
    phase: str
    stable: int | None
    canary: int | None
    weight: float
    shadow: float
    generation: int
    last_outcome: str | None
    history: list[dict]
    live: dict = Field(description="sliding-window stats per role: requests, error rate, p95 latency, agreement")
    per_version: dict = Field(description="request counts by version and status since this replica started")
    thresholds: dict


def require_admin(request: Request) -> RolloutManager:
    """Constant-time bearer-token check; with no token configured the routes are off."""
    token = request.app.state.settings.admin_token
    if token is None:
        raise Disabled("the rollout API is disabled: set GATEWAY_ADMIN_TOKEN to enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <GATEWAY_ADMIN_TOKEN>)")
    return request.app.state.rollout


def rollout_manager(request: Request, authorization: str | None = Header(None, description="Bearer "
                    "<GATEWAY_ADMIN_TOKEN>, checked before the body is read")) -> RolloutManager:
    """The routes' dependency: documents the header; AdminRoute has already checked it."""
    return request.app.state.rollout


class AdminRoute(APIRoute):
    """Checks the token before FastAPI reads or parses the body: without the token, malformed JSON is a 401 too, and
    an unauthenticated client cannot make the gateway read a body at all."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            require_admin(request)
            return await handler(request)

        return guarded


def build_rollout_router() -> APIRouter:
    router = APIRouter(prefix="/v1/rollout", tags=["rollout"], route_class=AdminRoute,
                       responses={**ERRORS, 401: {"model": ERRORS[400]["model"]}, 403: {"model": ERRORS[400]["model"]},
                                  409: {"model": ERRORS[400]["model"]}})

    @router.get("", response_model=RolloutStatus, summary="Rollout state and live per-version comparison")
    async def status(manager: RolloutManager = Depends(rollout_manager)):
        return manager.status()

    @router.post("/start", response_model=RolloutStatus, summary="Load a version and send it a share of traffic")
    async def start(body: StartRequest, manager: RolloutManager = Depends(rollout_manager)):
        await manager.start(body.version, body.weight, body.shadow)
        return manager.status()

    @router.post("/weight", response_model=RolloutStatus, summary="Change the canary's share (and shadow share)")
    async def set_weight(body: WeightRequest, manager: RolloutManager = Depends(rollout_manager)):
        await manager.set_weight(body.weight, body.shadow)
        return manager.status()

    @router.post("/promote", response_model=RolloutStatus, summary="Make the canary stable; unload the old one")
    async def promote(manager: RolloutManager = Depends(rollout_manager)):
        await manager.promote()
        return manager.status()

    @router.post("/abort", response_model=RolloutStatus, summary="Send all traffic back to stable; unload canary")
    async def abort(body: AbortRequest | None = None, manager: RolloutManager = Depends(rollout_manager)):
        await manager.abort((body or AbortRequest()).reason)
        return manager.status()

    return router
