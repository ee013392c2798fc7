"""Where voiceprints are kept: the store (:mod:`.store`, SQLite or PostgreSQL, the truth), its
schema and migrations (:mod:`.schema`), the FAISS index file that caches it (:mod:`.index`)
and its keeper (:mod:`.indexkeeper`), galleries (:mod:`.gallery`), API keys and audit
(:mod:`.keys`) and careful file writes (:mod:`.atomic`).
"""
