"""Google's image models: Gemini image models (``generateContent``) and Imagen
(``predict``), on the Gemini API (``gemini``, ``provider.py``) and on Vertex AI
(``vertex``, ``vertex.py``)."""
