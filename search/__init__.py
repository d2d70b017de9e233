"""Video search with a trained model: index a folder of videos as overlapping windows, query it in
words, get moments (file, start, end) and the frames the model saw.

- `index.py`: find videos, bring the index in line with the folder, encode what is missing, commit
  as it goes (`encode.py`: windows of files encoded as evaluation encodes clips; `store.py`: the
  SQLite manifest and float16 shards; `lock.py`: one writer per index; `legacy.py`: the earlier
  JSON indexes, migrated).
- `query.py`: text embeddings, ranked windows (`scan.py`: exact, streamed over the shards; `ann.py`:
  the optional faiss graph), moments (`moments.py`).
- `page.py`: the static HTML page of the moments with their frames and times.

`scripts/video_search.py` is the command line over these; docs/search.md the user guide. The
package is an app on top of the engine: it uses `engine`, `dataloaders` and `modules`; nothing
imports it but its command line and scripts.
"""
