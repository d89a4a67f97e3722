"""Unified routes: one format in and out, whatever the provider (docs/providers.md). Registered before the proxy."""

from __future__ import annotations

from flask import Blueprint, Response, request

from app.call.context import UNIFIED
from app.providers.registry import ANTHROPIC_FORMAT, OPENAI_FORMAT
from app.routes.common import serve

bp = Blueprint("unified", __name__)

# path → {method: endpoint name} and the unified format of the path (Portkey's endpoint names).
ROUTES: dict[str, tuple[str, dict[str, str]]] = {
    "/v1/chat/completions": (OPENAI_FORMAT, {"POST": "chatComplete"}),
    "/v1/completions": (OPENAI_FORMAT, {"POST": "complete"}),
    "/v1/embeddings": (OPENAI_FORMAT, {"POST": "embed"}),
    "/v1/images/generations": (OPENAI_FORMAT, {"POST": "imageGenerate"}),
    "/v1/images/edits": (OPENAI_FORMAT, {"POST": "imageEdit"}),
    "/v1/audio/speech": (OPENAI_FORMAT, {"POST": "createSpeech"}),
    "/v1/audio/transcriptions": (OPENAI_FORMAT, {"POST": "createTranscription"}),
    "/v1/audio/translations": (OPENAI_FORMAT, {"POST": "createTranslation"}),
    "/v1/messages": (ANTHROPIC_FORMAT, {"POST": "messages"}),
    "/v1/messages/count_tokens": (ANTHROPIC_FORMAT, {"POST": "messagesCountTokens"}),
    "/v1/responses": (OPENAI_FORMAT, {"POST": "createModelResponse"}),
    "/v1/responses/<id>": (OPENAI_FORMAT, {"GET": "getModelResponse", "DELETE": "deleteModelResponse"}),
    "/v1/responses/<id>/input_items": (OPENAI_FORMAT, {"GET": "listResponseInputItems"}),
    "/v1/files": (OPENAI_FORMAT, {"GET": "listFiles", "POST": "uploadFile"}),
    "/v1/files/<id>": (OPENAI_FORMAT, {"GET": "retrieveFile", "DELETE": "deleteFile"}),
    "/v1/files/<id>/content": (OPENAI_FORMAT, {"GET": "retrieveFileContent"}),
    "/v1/batches": (OPENAI_FORMAT, {"GET": "listBatches", "POST": "createBatch"}),
    "/v1/batches/<id>": (OPENAI_FORMAT, {"GET": "retrieveBatch"}),
    "/v1/batches/<id>/cancel": (OPENAI_FORMAT, {"POST": "cancelBatch"}),
    "/v1/batches/<id>/output": (OPENAI_FORMAT, {"GET": "getBatchOutput"}),
}


def _view(unified_format: str, endpoints: dict[str, str]):  # type: ignore[no-untyped-def]
    def view(**_: str) -> Response:
        # HEAD is answered like GET (werkzeug adds it to every GET rule).
        return serve(UNIFIED, endpoints.get(request.method) or endpoints["GET"], unified_format)
    return view


for _path, (_format, _endpoints) in ROUTES.items():
    bp.add_url_rule(_path, endpoint=next(iter(_endpoints.values())), view_func=_view(_format, _endpoints),
                    methods=list(_endpoints), provide_automatic_options=False)
