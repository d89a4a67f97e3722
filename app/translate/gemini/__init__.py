"""Google's Gemini API and Vertex AI (Google's Gemini models) as native APIs of /v1/chat/completions and /v1/embeddings.

Both speak the same GenerateContent format; they differ in where a model lives (the path) and in
how embeddings are asked for (embedContent / batchEmbedContents against Vertex's `:predict`).
"""

from __future__ import annotations

from app.translate.gemini.chat import GeminiChat
from app.translate.gemini.embed import GeminiEmbed, VertexEmbed
from app.translate.gemini.paths import GEMINI_API, VERTEX, Site
from app.translate.gemini.schema import gemini_schema
from app.translate.gemini.stream import GeminiChunks

__all__ = ["GEMINI_API", "GOOGLE_CHAT", "GOOGLE_EMBED", "VERTEX", "VERTEX_CHAT", "VERTEX_EMBED", "GeminiChat",
           "GeminiChunks", "GeminiEmbed", "Site", "VertexEmbed", "gemini_schema"]


GOOGLE_CHAT = GeminiChat(GEMINI_API)
VERTEX_CHAT = GeminiChat(VERTEX)
GOOGLE_EMBED = GeminiEmbed()
VERTEX_EMBED = VertexEmbed()
