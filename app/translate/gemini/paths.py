"""Where a model lives: the Gemini API's and Vertex AI's paths, and which file URLs each fetches itself."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import BadRequest
from app.translate.base import CallFacts
from app.translate.shape import path_segment


@dataclass(frozen=True)
class Site:
    """One of Google's two homes for Gemini: the model's path and which file URLs it fetches itself."""

    slug: str
    vertex: bool

    def model_path(self, facts: CallFacts) -> str:
        """Return the path of the call's model, without the `:method` suffix."""
        model = facts.model
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(f"{self.slug} needs a model: set `model` in the body")
        model = model.strip()
        if not self.vertex:
            if model.startswith("tunedModels/"):
                return "/v1beta/tunedModels/" + segment(model.removeprefix("tunedModels/"))
            return "/v1beta/models/" + segment(model.removeprefix("models/"))
        model = model.removeprefix("publishers/google/models/").removeprefix("models/")
        return f"{vertex_location(facts)}/publishers/google/models/{segment(model)}"

    def file_uri(self, url: str) -> bool:
        """Return whether a URL may go as fileData (fetched by Google) rather than inline bytes."""
        scheme = url.split(":", 1)[0].lower()
        # The Gemini API fetches http(s) URLs (public or signed) and its own Files API URIs; Cloud Storage
        # objects must be registered with its Files API first. Vertex reads gs:// and http(s) URLs directly.
        return scheme in ("http", "https") or (self.vertex and scheme == "gs")


GEMINI_API = Site("google", vertex=False)
VERTEX = Site("vertex-ai", vertex=True)


def vertex_location(facts: CallFacts) -> str:
    """Return `/v1/projects/<project>/locations/<region>` from the target's Vertex options."""
    project = _option(facts, "vertex_project_id", "x-portkey-vertex-project-id")
    region = _option(facts, "vertex_region", "x-portkey-vertex-region")
    return f"/v1/projects/{segment(project, 'vertex_project_id')}/locations/{segment(region, 'vertex_region')}"


def segment(value: str, name: str = "model") -> str:
    """Return a value quoted as one path segment (`@` kept for model versions): it cannot climb or add to the path."""
    return path_segment(value, name, safe="@")


def _option(facts: CallFacts, name: str, header: str) -> str:
    value = facts.options.get(name)
    if not value:
        raise BadRequest(f"vertex-ai needs {name}: send the {header} header or set it in the catalog entry")
    return value
