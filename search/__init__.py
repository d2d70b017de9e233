"""Video search with a trained model: index a folder of videos, query it in words, see the frames.

- `index.py`: find videos, encode them exactly as evaluation does, keep an incremental index
  (L2-normalised embeddings + `manifest.json`) on disk; `load_index`, `model_for_index`.
- `query.py`: text embeddings and top-k search (exact chunked product, or faiss when installed).
- `page.py`: the static HTML page of the results with the frames the model saw.

`scripts/video_search.py` is the command line over these; docs/search.md the user guide. The
package is an app on top of the engine: it uses `engine`, `dataloaders` and `modules`; nothing
imports it but its command line.
"""
