"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from ..http import Request, Response
from .context import Context, json_response
from .served import ServedModel
from .wire.models import Model, ModelList


def _wire(m: ServedModel) -> Model:
    return Model(id=m.id, created=m.created, owned_by=m.owned_by)


async def list_models(ctx: Context, request: Request) -> Response:
    return json_response(ModelList(data=[_wire(m) for m in ctx.catalog.all()]))


async def retrieve(ctx: Context, request: Request) -> Response:
    return json_response(_wire(ctx.catalog.get(request.path_params["model"])))
